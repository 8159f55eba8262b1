// The open conversation's messages: drawn from `state.conv`; the reply being streamed is
// refilled in place (fillAssistant). Editing and regenerating start a new reply.

import { saveConv } from "./conversations.js";
import { $, actions, button, showBanner } from "./dom.js";
import { blockCache, renderBlocks, splitReply } from "./markdown.js";
import { run } from "./reply.js";
import { state } from "./state.js";
import { messageProblem } from "./store.js";
import { toolResultElement } from "./tools.js";

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

// A long conversation opens with its last WINDOW messages drawn; earlier ones are drawn
// WINDOW at a time when the reader scrolls up to them (a 500-message conversation opens as
// fast as a short one).
const WINDOW = 30;
let from = 0; // the index of the first message drawn

/** Draw the conversation again. The view moves to the end when `follow` (a conversation
 * opened, a message sent) or when the reader was already there; otherwise it stays where the
 * reader scrolled. `opened`: a conversation just opened, drawn from its last WINDOW. */
export function renderMessages(follow = false, opened = false) {
  const box = $("messages");
  const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const top = box.scrollTop;
  const count = state.conv.messages.length;
  from = opened ? Math.max(0, count - WINDOW) : Math.min(from, Math.max(0, count - WINDOW));
  const lastUser = state.conv.messages.findLastIndex((m) => m?.role === "user");
  const shown = state.conv.messages.slice(from)
    .map((m, i) => messageElement(m, from + i, from + i === lastUser));
  box.replaceChildren(...(from ? [earlierButton()] : []), ...shown);
  box.scrollTop = follow || atEnd ? box.scrollHeight : top;
}

function earlierButton() {
  const more = button(`Show ${Math.min(from, WINDOW)} earlier messages`, "earlier",
                      showEarlier);
  new IntersectionObserver((seen, observer) => { // scrolled up to it: draw them
    if (seen.some((e) => e.isIntersecting)) { observer.disconnect(); showEarlier(); }
  }, { root: $("messages") }).observe(more);
  return more;
}

/** Draw the WINDOW messages before the first one drawn, keeping what the reader sees where
 * it is. */
function showEarlier() {
  const box = $("messages");
  const old = box.querySelector(":scope > .earlier");
  if (!old || !old.isConnected) return;
  const start = Math.max(0, from - WINDOW);
  const lastUser = state.conv.messages.findLastIndex((m) => m?.role === "user");
  const elements = state.conv.messages.slice(start, from)
    .map((m, i) => messageElement(m, start + i, start + i === lastUser));
  from = start;
  const height = box.scrollHeight;
  old.replaceWith(...(from ? [earlierButton()] : []), ...elements);
  box.scrollTop += box.scrollHeight - height;
}

/** Draw one message added at the end (sent, or a reply starting) without drawing the others
 * again; a new user message takes the actions (Edit, Copy, Regenerate) from the ones before
 * it. Returns its element. */
export function appendMessage(m) {
  const box = $("messages");
  const index = state.conv.messages.indexOf(m);
  if (m.role === "user") {
    for (const old of box.querySelectorAll(":scope > .message > .actions, .end-mark .retry")) {
      old.remove();
    }
  }
  const el = messageElement(m, index, m.role === "user");
  box.append(el);
  box.scrollTop = box.scrollHeight;
  return el;
}

function messageElement(m, index, lastUser) {
  const why = messageProblem(m);
  if (why) return damagedElement(index, why);
  const el = document.createElement("div");
  el.className = `message ${m.role}`;
  const last = index === state.conv.messages.length - 1;
  if (m.role === "user") {
    fillUser(el, m);
    if (lastUser) el.append(actions(button("Edit", "edit", () => startEdit(el, m))));
  } else if (m.role === "tool") {
    el.append(toolResultElement(m));
  } else {
    fillAssistant(el, m);
    if (last && state.busy?.reply !== m) el.append(replyActions(m));
  }
  return el;
}

/** A stored message the page cannot use (written by hand or by another program): shown as
 * such, in its place, and never sent; the rest of the conversation stays usable. */
function damagedElement(index, why) {
  const el = document.createElement("div");
  el.className = "message damaged";
  el.setAttribute("role", "note");
  el.textContent = `⚠ Message ${index + 1} cannot be shown: it ${why}. It is kept as ` +
    "stored and not sent to the model.";
  return el;
}

/** Copy and Regenerate, for the last reply once it has ended (not while it streams). */
function replyActions(m) {
  return actions(button("Copy", "copy-reply", () => copy(splitReply(m.content).answer)),
                 button("Regenerate", "regenerate", regenerate));
}

/** How a reply ended early, where it ended: a stopped reply says so; an interrupted one
 * says what happened, with a Retry beside it while it is the last reply. */
function endMark(m, last) {
  if (!m.stopped && !m.interrupted) return null;
  const mark = document.createElement("div");
  mark.className = `end-mark ${m.interrupted ? "interrupted" : "stopped"}`;
  const text = document.createElement("span");
  text.textContent = m.interrupted ? "⚠ Interrupted: the reply ended before the model finished"
    : "Stopped";
  mark.append(text);
  if (m.interrupted && last) mark.append(button("Retry", "retry", regenerate));
  return mark;
}

/** A streamed reply has ended: its element is completed in place, so the view and any
 * selection in it stay. */
export function finishReply(el, m) {
  fillAssistant(el, m);
  el.querySelector(":scope > .actions")?.remove();
  el.append(replyActions(m));
}

/** A user message is a bubble; its Edit sits below it, shown on hover or focus. */
function fillUser(el, m) {
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  el.append(bubble);
  for (const file of m.files ?? []) {
    const chip = document.createElement("span");
    chip.className = "file-chip";
    chip.textContent = `📎 ${file}`;
    bubble.append(chip);
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
    bubble.append(text, more);
  } else {
    text.textContent = shown;
    bubble.append(text);
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
  el.querySelector(":scope > .end-mark")?.remove();
  const line = statsLine(m);
  let after = el.querySelector(":scope > .tool-calls") || answer;
  if (line) {
    const stats = document.createElement("div");
    stats.className = "stats";
    stats.textContent = line;
    after.after(stats);
    after = stats;
  }
  const mark = endMark(m, state.conv.messages.at(-1) === m);
  if (mark) after.after(mark);
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
    if (s.cached !== undefined) notes.push(`${s.cached} of ${s.prompt} prompt tokens cached`);
  }
  if (m.finish === "length") notes.push("cut at the token limit");
  return notes.join(" · ");
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    showBanner("The browser did not allow copying to the clipboard.");
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
  const cancel = button("Cancel", "edit-cancel", () => renderMessages());
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
