// The chat page: conversations in the sidebar, the current one in the middle, the composer
// below. State lives in `conv` (saved to localStorage after every change) and the DOM is
// redrawn from it; only the reply being streamed is updated in place.

import { Api, ApiError, Cut, NeedsKey, Unreachable } from "./api.js";
import { renderMarkdown, splitReply } from "./markdown.js";
import * as store from "./store.js";

const $ = (id) => document.getElementById(id);
const SAMPLING = ["temperature", "top_p", "top_k", "max_tokens"];
const MAX_FILE = 64 << 20; // as `qwen-mlx chat /file`
const SHOWN_CHARS = 4000; // longer user messages are folded (a huge paste stays fast)

let apiKey = store.loadKey();
const api = new Api(() => apiKey);
let model = { id: "", defaults: {}, thinking: false };
let settings = store.loadSettings();
let conv = null;
let busy = null; // {controller, reply} while a reply streams
let pendingFiles = []; // [{name, text}] attached to the next message

// -- banner and API key ------------------------------------------------------------------

function showBanner(text) {
  $("banner-text").textContent = text;
  $("banner").hidden = false;
}

function hideBanner() {
  $("banner").hidden = true;
}

let keyWaiters = null;

/** Ask for the API key (once: it is kept in this browser); resolves when one is given. */
function askKey(message) {
  $("key-error").textContent = message || "";
  $("key-error").hidden = !message;
  if (!keyWaiters) {
    keyWaiters = [];
    $("key").value = "";
    $("key-dialog").showModal();
    $("key").focus();
  }
  return new Promise((resolve) => keyWaiters.push(resolve));
}

$("key-form").addEventListener("submit", () => {
  apiKey = $("key").value.trim();
  store.saveKey(apiKey);
  const waiters = keyWaiters || [];
  keyWaiters = null;
  waiters.forEach((resolve) => resolve());
});

$("key-dialog").addEventListener("cancel", (e) => e.preventDefault()); // nothing works without it

/** Run `call`, asking for the key again while the server answers 401. */
async function withKey(call) {
  for (;;) {
    try {
      return await call();
    } catch (e) {
      if (!(e instanceof NeedsKey)) throw e;
      await askKey(apiKey ? `The server refused that key: ${e.message}` : "");
    }
  }
}

// -- the model and the settings ------------------------------------------------------------

async function connect() {
  try {
    model = await withKey(() => api.model());
    hideBanner();
  } catch (e) {
    $("model-name").textContent = "not connected";
    showBanner(e.message);
    return;
  }
  $("model-name").textContent = model.id;
  document.title = `${model.id} · qwen-mlx chat`;
  for (const name of SAMPLING) {
    const value = model.defaults[name];
    $(name).placeholder = value === undefined ? "server default" : String(value);
  }
  $("thinking-label").hidden = !model.thinking;
}

function loadSettingsIntoForm() {
  for (const name of SAMPLING) $(name).value = settings[name] ?? "";
  $("thinking").checked = settings.thinking ?? true;
  $("tools").value = settings.tools ?? "";
}

function saveSettingsFromForm() {
  settings = { thinking: $("thinking").checked, tools: $("tools").value };
  for (const name of SAMPLING) {
    if ($(name).value !== "") settings[name] = Number($(name).value);
  }
  trySave(() => store.saveSettings(settings));
}

for (const id of [...SAMPLING, "thinking", "tools"]) {
  $(id).addEventListener("change", saveSettingsFromForm);
}

$("system").addEventListener("change", () => {
  conv.system = $("system").value;
  saveConv();
});

$("settings-toggle").addEventListener("click", () => {
  const open = $("settings").hidden;
  $("settings").hidden = !open;
  $("settings-toggle").setAttribute("aria-expanded", String(open));
});

/** The request body for the conversation so far (throws ApiError for bad tools JSON). */
function requestBody() {
  const messages = [];
  if (conv.system.trim()) messages.push({ role: "system", content: conv.system });
  for (const m of conv.messages) {
    if (m.role === "assistant" && !m.content && !m.tool_calls?.length) continue;
    const out = { role: m.role, content: m.content };
    if (m.tool_calls?.length) out.tool_calls = m.tool_calls;
    messages.push(out);
  }
  const body = { model: model.id, messages, stream: true,
                 stream_options: { include_usage: true } };
  for (const name of SAMPLING) {
    if (settings[name] !== undefined) body[name] = settings[name];
  }
  if (model.thinking && settings.thinking === false) {
    body.chat_template_kwargs = { enable_thinking: false };
  }
  if ((settings.tools || "").trim()) {
    let tools;
    try {
      tools = JSON.parse(settings.tools);
    } catch (e) {
      throw new ApiError(`the Tools setting is not valid JSON: ${e.message}`, 0);
    }
    if (!Array.isArray(tools)) throw new ApiError("the Tools setting must be a JSON list", 0);
    body.tools = tools;
  }
  return body;
}

// -- conversations ---------------------------------------------------------------------

function trySave(save) {
  try {
    save();
    return true;
  } catch (e) {
    if (e instanceof store.StorageFull) {
      showBanner(e.message);
      return false;
    }
    throw e;
  }
}

function saveConv(touch = true) {
  if (conv.messages.length || conv.title || conv.system) {
    trySave(() => store.saveConversation(conv, touch));
  }
  renderSidebar();
}

function openConversation(id) {
  if (busy) return;
  conv = (id && store.loadConversation(id)) || store.newConversation();
  $("system").value = conv.system;
  renderMessages();
  renderSidebar();
}

function renderSidebar() {
  const list = $("conversations");
  list.replaceChildren();
  const items = store.listConversations();
  if (conv && !items.some((c) => c.id === conv.id)) {
    items.unshift({ id: conv.id, title: store.titleOf(conv) });
  }
  for (const item of items) {
    const li = document.createElement("li");
    li.dataset.id = item.id;
    li.classList.toggle("current", conv && item.id === conv.id);
    const title = document.createElement("button");
    title.type = "button";
    title.className = "title";
    title.textContent = item.title || "New chat";
    title.addEventListener("click", () => openConversation(item.id));
    const rename = button("✎", "rename", () => startRename(li, item));
    rename.title = "Rename";
    const remove = button("×", "delete", () => removeConversation(item));
    remove.title = "Delete";
    li.append(title, rename, remove);
    list.append(li);
  }
}

function startRename(li, item) {
  const input = document.createElement("input");
  input.className = "rename-input";
  input.value = item.title || "";
  li.querySelector(".title").replaceWith(input);
  input.focus();
  input.select();
  let done = false;
  const finish = (keep) => {
    if (done) return;
    done = true;
    const target = item.id === conv.id ? conv : store.loadConversation(item.id);
    if (keep && target) {
      target.title = input.value.trim();
      if (target === conv) saveConv(false);
      else trySave(() => store.saveConversation(target, false));
    }
    renderSidebar();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") finish(true);
    if (e.key === "Escape") { e.stopPropagation(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
}

function removeConversation(item) {
  if (busy && item.id === conv.id) return;
  if (!confirm(`Delete "${item.title || "New chat"}"?`)) return;
  store.deleteConversation(item.id);
  if (item.id === conv.id) openConversation(store.listConversations()[0]?.id);
  else renderSidebar();
}

$("new-chat").addEventListener("click", () => openConversation(null));

window.addEventListener("storage", (e) => { // another tab saved: keep the list current
  if (e.key === "qwen-mlx.conversations") renderSidebar();
});

function download(name, type, text) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function fileStem() {
  return store.titleOf(conv).replace(/[^\p{L}\p{N}]+/gu, "-").replace(/^-|-$/g, "")
    .slice(0, 60) || "chat";
}

$("export-json").addEventListener("click", () => {
  download(`${fileStem()}.json`, "application/json", JSON.stringify(conv, null, 2) + "\n");
});
$("export-md").addEventListener("click", () => {
  download(`${fileStem()}.md`, "text/markdown", store.asMarkdown(conv));
});

// -- messages --------------------------------------------------------------------------

function button(text, className, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

function renderMessages() {
  const box = $("messages");
  const lastUser = conv.messages.findLastIndex((m) => m.role === "user");
  box.replaceChildren(...conv.messages.map((m, i) => messageElement(m, i, i === lastUser)));
  box.scrollTop = box.scrollHeight;
}

function messageElement(m, index, lastUser) {
  const el = document.createElement("div");
  el.className = `message ${m.role}`;
  const last = index === conv.messages.length - 1;
  if (m.role === "user") {
    fillUser(el, m);
    if (lastUser) el.append(actions(button("Edit", "edit", () => startEdit(el, m))));
  } else {
    fillAssistant(el, m);
    if (last) el.append(actions(button("Copy", "copy-reply", () => copy(splitReply(m.content).answer)),
                                button("Regenerate", "regenerate", regenerate)));
  }
  return el;
}

function actions(...buttons) {
  const bar = document.createElement("div");
  bar.className = "actions";
  bar.append(...buttons);
  return bar;
}

function fillUser(el, m) {
  for (const file of m.files ?? []) {
    const chip = document.createElement("span");
    chip.className = "file-chip";
    chip.textContent = `📎 ${file}`;
    el.append(chip);
  }
  const text = document.createElement("div");
  text.className = "text";
  const shown = m.shown ?? m.content;
  if (shown.length > SHOWN_CHARS) {
    text.textContent = shown.slice(0, SHOWN_CHARS) + "…";
    const more = button(`Show all ${shown.length.toLocaleString()} characters`, "more", () => {
      text.textContent = shown;
      more.remove();
    });
    el.append(text, more);
  } else {
    text.textContent = shown;
    el.append(text);
  }
}

/** Fill (or refill, while streaming) an assistant message's element. */
function fillAssistant(el, m) {
  const parts = splitReply(m.content);
  let thinking = el.querySelector(":scope > details.thinking");
  if (parts.thinking !== null) {
    if (!thinking) {
      thinking = document.createElement("details");
      thinking.className = "thinking";
      thinking.append(document.createElement("summary"), document.createElement("div"));
      el.prepend(thinking);
    }
    thinking.querySelector("summary").textContent = parts.thinkingOpen ? "Thinking…" : "Thoughts";
    thinking.querySelector("div").innerHTML = renderMarkdown(parts.thinking);
  }
  let answer = el.querySelector(":scope > .markdown");
  if (!answer) {
    answer = document.createElement("div");
    answer.className = "markdown";
    el.append(answer);
  }
  answer.innerHTML = renderMarkdown(parts.answer);
  el.querySelector(":scope > .tool-calls")?.remove();
  const calls = [...parts.calls, ...(m.tool_calls ?? []).map((c) => ({
    name: c.function?.name ?? "?", arguments: c.function?.arguments ?? "" }))];
  if (calls.length) {
    const box = document.createElement("div");
    box.className = "tool-calls";
    for (const call of calls) box.append(toolCallElement(call));
    answer.after(box);
  }
  el.querySelector(":scope > .stats")?.remove();
  const line = statsLine(m);
  if (line) {
    const stats = document.createElement("div");
    stats.className = "stats";
    stats.textContent = line;
    (el.querySelector(":scope > .tool-calls") || answer).after(stats);
  }
}

function toolCallElement(call) {
  const block = document.createElement("div");
  block.className = "tool-call";
  const head = document.createElement("div");
  head.className = "tool-name";
  head.textContent = `tool call: ${call.name}`;
  const args = document.createElement("pre");
  let value = call.arguments;
  if (typeof value === "string") {
    try { value = JSON.parse(value); } catch { /* shown as sent */ }
  }
  args.textContent = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  block.append(head, args);
  return block;
}

function statsLine(m) {
  const s = m.stats;
  const notes = [];
  if (s) {
    notes.push(`${s.completion} token${s.completion === 1 ? "" : "s"}`);
    if (s.tps) notes.push(`${s.tps.toFixed(1)} tok/s`);
    if (s.ttft !== undefined) notes.push(`first token ${s.ttft.toFixed(2)} s`);
    if (s.prompt !== undefined) notes.push(`${s.cached} of ${s.prompt} prompt tokens cached`);
  }
  if (m.finish === "length") notes.push("cut at the token limit");
  if (m.stopped) notes.push("stopped");
  if (m.interrupted) notes.push("interrupted");
  return notes.join(" · ");
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    showBanner("the browser did not allow copying to the clipboard");
  }
}

$("messages").addEventListener("click", (e) => {
  const target = e.target.closest(".copy-code");
  if (!target) return;
  copy(target.parentElement.querySelector("pre").textContent);
  target.textContent = "Copied";
  setTimeout(() => { target.textContent = "Copy"; }, 1500);
});

function startEdit(el, m) {
  if (busy) return;
  const editor = document.createElement("textarea");
  editor.className = "edit-box";
  editor.value = m.shown ?? m.content;
  const save = button("Send", "edit-send", () => {
    const index = conv.messages.indexOf(m);
    conv.messages.splice(index + 1);
    setUserText(m, editor.value);
    saveConv();
    renderMessages();
    run({ resend: true });
  });
  const cancel = button("Cancel", "edit-cancel", renderMessages);
  el.replaceChildren(editor, actions(save, cancel));
  editor.focus();
}

function setUserText(m, text) {
  m.shown = text;
  m.content = m.attached ? (text.trim() ? `${m.attached}\n\n${text.trim()}` : m.attached) : text;
}

function regenerate() {
  if (busy) return;
  if (conv.messages.at(-1)?.role === "assistant") conv.messages.pop();
  renderMessages();
  run({ resend: true });
}

// -- sending and streaming -----------------------------------------------------------

async function send() {
  const text = $("input").value;
  if (busy || (!text.trim() && !pendingFiles.length)) return;
  hideBanner();
  const m = { role: "user", files: pendingFiles.map((f) => f.name) };
  // the files as `qwen-mlx chat /file` puts them: name, blank line, text; then the request
  m.attached = pendingFiles.map((f) => `${f.name}:\n\n${f.text.trimEnd()}`).join("\n\n");
  setUserText(m, text);
  conv.messages.push(m);
  $("input").value = "";
  const files = pendingFiles;
  pendingFiles = [];
  renderAttachments();
  saveConv();
  renderMessages();
  const ok = await run({ resend: false });
  if (!ok) { // refused or unreachable: the message goes back into the composer
    conv.messages.splice(conv.messages.indexOf(m), 1);
    saveConv();
    renderMessages();
    if (!$("input").value) $("input").value = text;
    if (!pendingFiles.length) { pendingFiles = files; renderAttachments(); }
  }
}

/** Stream a reply to the conversation. False when nothing came back (the caller restores
 * what the user typed); a reply cut or stopped midway is kept. */
async function run({ resend }) {
  if (!model.id) { // the server was not reachable when the page loaded: try again now
    await connect();
    if (!model.id) return false;
  }
  let body;
  try {
    body = requestBody();
  } catch (e) {
    showBanner(e.message);
    return false;
  }
  const reply = { role: "assistant", content: "" };
  conv.messages.push(reply);
  renderMessages();
  const el = $("messages").lastElementChild;
  const controller = new AbortController();
  busy = { controller, reply };
  setBusy(true);
  const started = performance.now();
  let first = null, usage = null, drawn = false;
  const redraw = () => {
    if (drawn) return;
    drawn = true;
    requestAnimationFrame(() => {
      drawn = false;
      fillAssistant(el, reply);
      const box = $("messages");
      if (box.scrollHeight - box.scrollTop - box.clientHeight < 200) box.scrollTop = box.scrollHeight;
    });
  };
  let ok = true;
  try {
    await withKey(async () => {
      for await (const chunk of api.chat(body, controller.signal)) {
        if (chunk.usage) usage = chunk.usage;
        const choice = chunk.choices?.[0];
        if (!choice) continue;
        const delta = choice.delta || {};
        if (delta.content || delta.tool_calls) first ??= performance.now();
        if (delta.content) reply.content += delta.content;
        for (const call of delta.tool_calls ?? []) mergeCall(reply, call);
        if (choice.finish_reason) reply.finish = choice.finish_reason;
        redraw();
      }
    });
  } catch (e) {
    if (e.name === "AbortError") {
      reply.stopped = true;
    } else if (e instanceof Cut || (reply.content && e instanceof ApiError)) {
      reply.interrupted = true;
      showBanner(`${e.message}. What arrived is kept; Regenerate asks again.`);
    } else {
      ok = false;
      showBanner(e instanceof Unreachable || e instanceof ApiError ? e.message : String(e));
    }
  }
  const ended = performance.now();
  if (usage) { // the server's counts; the times are this page's
    const stats = { completion: usage.completion_tokens, prompt: usage.prompt_tokens,
                    cached: usage.prompt_tokens_details?.cached_tokens ?? 0 };
    if (first !== null) {
      stats.ttft = (first - started) / 1000;
      if (stats.completion > 1 && ended > first) {
        stats.tps = (stats.completion - 1) / ((ended - first) / 1000);
      }
    }
    reply.stats = stats;
  }
  busy = null;
  setBusy(false);
  if (!ok) {
    conv.messages.splice(conv.messages.indexOf(reply), 1);
    if (resend) saveConv();
  } else {
    saveConv();
  }
  renderMessages();
  return ok || resend;
}

/** OpenAI streams a tool call in fragments by index (our server sends each whole). */
function mergeCall(reply, call) {
  reply.tool_calls ??= [];
  const index = call.index ?? reply.tool_calls.length;
  const known = reply.tool_calls[index];
  if (!known) {
    reply.tool_calls[index] = { id: call.id, type: "function",
                                function: { name: call.function?.name ?? "",
                                            arguments: call.function?.arguments ?? "" } };
  } else {
    known.function.name += call.function?.name ?? "";
    known.function.arguments += call.function?.arguments ?? "";
  }
}

function setBusy(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  document.body.classList.toggle("busy", on);
}

function stop() {
  busy?.controller.abort();
}

$("stop").addEventListener("click", stop);
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  send();
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { // IME: Enter picks a character
    e.preventDefault();
    send();
  }
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && busy) stop();
});

let growPending = false;
$("input").addEventListener("input", () => { // grow with the text, once per frame at most
  if (growPending) return;
  growPending = true;
  requestAnimationFrame(() => {
    growPending = false;
    const input = $("input");
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, window.innerHeight * 0.4)}px`;
  });
});

// -- attachments ---------------------------------------------------------------------

$("file").addEventListener("change", async (e) => {
  for (const file of e.target.files) {
    if (file.size > MAX_FILE) {
      showBanner(`${file.name} is ${(file.size / 2 ** 20).toFixed(0)} MiB; files are limited ` +
                 `to ${MAX_FILE >> 20} MiB of text`);
      continue;
    }
    const text = await file.text();
    if (text.includes("\0")) {
      showBanner(`${file.name} is a binary file, not text`);
    } else if (!text.trim()) {
      showBanner(`${file.name} is empty`);
    } else {
      pendingFiles.push({ name: file.name, text });
    }
  }
  e.target.value = "";
  renderAttachments();
});

function renderAttachments() {
  $("attachments").replaceChildren(...pendingFiles.map((f, i) => {
    const chip = document.createElement("span");
    chip.className = "file-chip";
    chip.textContent = `📎 ${f.name} (${f.text.length.toLocaleString()} characters) `;
    chip.append(button("×", "remove-file", () => {
      pendingFiles.splice(i, 1);
      renderAttachments();
    }));
    return chip;
  }));
}

$("banner-close").addEventListener("click", hideBanner);

// -- start ---------------------------------------------------------------------------

loadSettingsIntoForm();
openConversation(store.listConversations()[0]?.id);
connect();
