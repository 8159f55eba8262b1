// The open conversation's messages: drawn from `state.conv`; the reply being streamed is
// refilled in place (fillAssistant). Editing and regenerating start a new reply.

import { saveConv } from "./conversations.js";
import { $, actions, button, showBanner } from "./dom.js";
import { blockCache, renderBlocks, splitReply } from "./markdown.js";
import { run } from "./reply.js";
import { state } from "./state.js";

const SHOWN_CHARS = 4000; // longer user messages are folded (a huge paste stays fast)

// Each assistant message's rendered blocks (thinking and answer), kept while the page is open:
// a redraw parses only what changed, and drawing the conversation again parses nothing.
const rendered = new WeakMap();

function cachesOf(m) {
  if (!rendered.has(m)) rendered.set(m, { thinking: blockCache(), answer: blockCache() });
  return rendered.get(m);
}

const drawn = new WeakMap(); // element -> {generation, blocks, tail}: what drawBlocks put there

/** Draw `text` into `box` block by block: blocks already in the box stay as they are (a
 * selection in them survives), the last, still changing, one is replaced. */
function drawBlocks(box, text, cache) {
  const { blocks, tail, generation } = renderBlocks(text, cache);
  let mine = drawn.get(box);
  if (!mine || mine.generation !== generation || mine.blocks > blocks.length) {
    box.replaceChildren();
    mine = { generation, blocks: 0, tail: [] };
    drawn.set(box, mine);
  }
  for (const node of mine.tail) node.remove();
  if (mine.blocks < blocks.length) {
    box.insertAdjacentHTML("beforeend", blocks.slice(mine.blocks).join(""));
    mine.blocks = blocks.length;
  }
  const template = document.createElement("template");
  template.innerHTML = tail;
  mine.tail = [...template.content.childNodes];
  box.append(template.content);
}

/** Draw the conversation again. The view moves to the end when `follow` (a conversation
 * opened, a message sent) or when the reader was already there; otherwise it stays where the
 * reader scrolled. */
export function renderMessages(follow = false) {
  const box = $("messages");
  const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const top = box.scrollTop;
  const lastUser = state.conv.messages.findLastIndex((m) => m.role === "user");
  box.replaceChildren(...state.conv.messages.map((m, i) => messageElement(m, i, i === lastUser)));
  box.scrollTop = follow || atEnd ? box.scrollHeight : top;
}

function messageElement(m, index, lastUser) {
  const el = document.createElement("div");
  el.className = `message ${m.role}`;
  const last = index === state.conv.messages.length - 1;
  if (m.role === "user") {
    fillUser(el, m);
    if (lastUser) el.append(actions(button("Edit", "edit", () => startEdit(el, m))));
  } else {
    fillAssistant(el, m);
    if (last && state.busy?.reply !== m) el.append(replyActions(m));
  }
  return el;
}

/** Copy and Regenerate, for the last reply once it has ended (not while it streams). */
function replyActions(m) {
  return actions(button("Copy", "copy-reply", () => copy(splitReply(m.content).answer)),
                 button("Regenerate", "regenerate", regenerate));
}

/** A streamed reply has ended: its element is completed in place, so the view and any
 * selection in it stay. */
export function finishReply(el, m) {
  fillAssistant(el, m);
  el.querySelector(":scope > .actions")?.remove();
  el.append(replyActions(m));
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
export function fillAssistant(el, m) {
  const parts = splitReply(m.content);
  // before the first token, the reply says it is waiting (chat.css draws the line)
  el.classList.toggle("waiting", state.busy?.reply === m && !m.content && !m.tool_calls?.length);
  const caches = cachesOf(m);
  let thinking = el.querySelector(":scope > details.thinking");
  if (parts.thinking !== null) {
    if (!thinking) {
      thinking = document.createElement("details");
      thinking.className = "thinking";
      thinking.append(document.createElement("summary"), document.createElement("div"));
      el.prepend(thinking);
    }
    thinking.querySelector("summary").textContent = parts.thinkingOpen ? "Thinking…" : "Thoughts";
    drawBlocks(thinking.querySelector("div"), parts.thinking, caches.thinking);
  }
  let answer = el.querySelector(":scope > .markdown");
  if (!answer) {
    answer = document.createElement("div");
    answer.className = "markdown";
    el.append(answer);
  }
  drawBlocks(answer, parts.answer, caches.answer);
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
  copy(target.closest(".code").querySelector("pre").textContent);
  target.textContent = "Copied";
  setTimeout(() => { target.textContent = "Copy"; }, 1500);
});

function startEdit(el, m) {
  if (state.busy) return;
  const editor = document.createElement("textarea");
  editor.className = "edit-box";
  editor.value = m.shown ?? m.content;
  const save = button("Send", "edit-send", () => {
    const index = state.conv.messages.indexOf(m);
    state.conv.messages.splice(index + 1);
    setUserText(m, editor.value);
    saveConv();
    renderMessages();
    run({ resend: true });
  });
  const cancel = button("Cancel", "edit-cancel", renderMessages);
  el.replaceChildren(editor, actions(save, cancel));
  editor.focus();
}

export function setUserText(m, text) {
  m.shown = text;
  m.content = m.attached ? (text.trim() ? `${m.attached}\n\n${text.trim()}` : m.attached) : text;
}

function regenerate() {
  if (state.busy) return;
  if (state.conv.messages.at(-1)?.role === "assistant") state.conv.messages.pop();
  renderMessages();
  run({ resend: true });
}
