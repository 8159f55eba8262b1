// A conversation out of the page and back: Export JSON (the whole conversation, as stored),
// Export Markdown (to read), Import JSON (an exported file back, as a new conversation).

import { openConversation, trySave } from "./conversations.js";
import { $, download, showBanner } from "./dom.js";
import { splitReply } from "./markdown.js";
import { state } from "./state.js";
import * as store from "./store.js";

function fileStem() {
  return store.titleOf(state.conv).replace(/[^\p{L}\p{N}]+/gu, "-").replace(/^-|-$/g, "")
    .slice(0, 60) || "chat";
}

/** Exports of an empty conversation would be empty files: say so instead. */
function exportable() {
  if (state.conv.messages.length) return true;
  showBanner("This conversation is empty: there is nothing to export yet.");
  return false;
}

$("export-json").addEventListener("click", () => {
  if (!exportable()) return;
  download(`${fileStem()}.json`, "application/json", JSON.stringify(state.conv, null, 2) + "\n");
});
$("export-md").addEventListener("click", () => {
  if (!exportable()) return;
  download(`${fileStem()}.md`, "text/markdown", asMarkdown(state.conv));
});

/** The conversation as Markdown: a heading per turn; a reply's thinking as a quote above
 * its answer and its tool calls as JSON blocks (no raw <think> or <tool_call> tags). */
function asMarkdown(conv) {
  const parts = [`# ${store.titleOf(conv)}`];
  if (conv.system) parts.push(`## System\n\n${conv.system}`);
  for (const m of conv.messages) {
    if (store.messageProblem(m)) {
      parts.push("## Damaged message\n\n(it cannot be read: kept in the JSON export only)");
      continue;
    }
    if (m.role !== "assistant") {
      parts.push(`## ${m.role === "user" ? "User" : "Tool"}\n\n${m.content}`);
      continue;
    }
    const reply = splitReply(m.content);
    const text = ["## Assistant"];
    if (reply.thinking) {
      text.push(`> **Thinking**\n>\n${reply.thinking.split("\n").map((l) => `> ${l}`.trimEnd())
        .join("\n")}`);
    }
    if (reply.answer) text.push(reply.answer);
    const calls = [...reply.calls, ...(m.tool_calls ?? []).map((c) => c.function)];
    for (const call of calls) {
      text.push(`\`\`\`json\n${JSON.stringify({ tool_call: call }, null, 2)}\n\`\`\``);
    }
    parts.push(text.join("\n\n"));
  }
  return parts.join("\n\n") + "\n";
}

$("import-json").addEventListener("click", () => $("import-file").click());
$("import-file").addEventListener("change", async () => {
  const file = $("import-file").files[0];
  $("import-file").value = ""; // the same file can be chosen again
  if (!file) return;
  let conv;
  try {
    conv = store.imported(JSON.parse(await file.text()));
  } catch (e) {
    showBanner(`Cannot import ${file.name}: ${e instanceof SyntaxError
      ? "it is not JSON" : e.message}.`);
    return;
  }
  if (!trySave(() => store.saveConversation(conv))) return;
  openConversation(conv.id);
});
