// Text files attached to the next message, as `qwen-mlx chat /file` attaches them.

import { $, button, showBanner } from "./dom.js";
import { state } from "./state.js";

const MAX_FILE = 64 << 20; // as `qwen-mlx chat /file`

$("file").addEventListener("change", async (e) => {
  for (const file of e.target.files) {
    if (file.size > MAX_FILE) {
      showBanner(`The file ${file.name} is ${(file.size / 2 ** 20).toFixed(0)} MiB; files are limited ` +
                 `to ${MAX_FILE >> 20} MiB of text.`);
      continue;
    }
    const text = await file.text();
    if (text.includes("\0")) {
      showBanner(`The file ${file.name} is binary, not text.`);
    } else if (!text.trim()) {
      showBanner(`The file ${file.name} is empty.`);
    } else {
      state.pendingFiles.push({ name: file.name, text });
    }
  }
  e.target.value = "";
  renderAttachments();
});

$("attach").addEventListener("click", () => $("file").click());

export function renderAttachments() {
  $("attachments").replaceChildren(...state.pendingFiles.map((f, i) => {
    const chip = document.createElement("span");
    chip.className = "file-chip";
    chip.textContent = `📎 ${f.name} (${f.text.length.toLocaleString()} characters) `;
    const remove = button("×", "remove-file", () => {
      state.pendingFiles.splice(i, 1);
      renderAttachments();
    });
    remove.setAttribute("aria-label", `Remove ${f.name}`);
    chip.append(remove);
    return chip;
  }));
}
