// Sending a message and streaming the reply: the composer, stop, and the reply's statistics.

import { ApiError, Cut, Unreachable } from "./api.js";
import { renderAttachments } from "./attachments.js";
import { connect, withKey } from "./connection.js";
import { saveConv, showSidebar } from "./conversations.js";
import { $, hideBanner, showBanner } from "./dom.js";
import { appendMessage, fillAssistant, finishReply, renderMessages, setUserText }
  from "./messages.js";
import { requestBody, toggleSettings } from "./settings.js";
import { api, state } from "./state.js";
import { answerCalls } from "./tools.js";

async function send() {
  const text = $("input").value;
  if (state.busy || (!text.trim() && !state.pendingFiles.length)) return;
  hideBanner();
  const m = { role: "user", files: state.pendingFiles.map((f) => f.name) };
  // the files as `qwen-mlx chat /file` puts them: name, blank line, text; then the request
  m.attached = state.pendingFiles.map((f) => `${f.name}:\n\n${f.text.trimEnd()}`).join("\n\n");
  setUserText(m, text);
  state.conv.messages.push(m);
  $("input").value = "";
  $("input").style.height = ""; // back to its size: it grew with the message
  const files = state.pendingFiles;
  state.pendingFiles = [];
  renderAttachments();
  saveConv();
  appendMessage(m);
  const ok = await run({ resend: false });
  if (!ok) { // refused or unreachable: the message goes back into the composer
    state.conv.messages.splice(state.conv.messages.indexOf(m), 1);
    saveConv();
    renderMessages();
    if (!$("input").value) $("input").value = text;
    if (!state.pendingFiles.length) { state.pendingFiles = files; renderAttachments(); }
  }
}

/** Stream a reply to the conversation. False when nothing came back (the caller restores
 * what the user typed); a reply cut or stopped midway is kept. */
export async function run({ resend }) {
  if (!state.model.id) { // the server was not reachable when the page loaded: try again now
    await connect(state.conv?.model);
    if (!state.model.id) return false;
  }
  let body;
  try {
    body = requestBody();
  } catch (e) {
    showBanner(e.message);
    return false;
  }
  const reply = { role: "assistant", content: "" };
  state.conv.messages.push(reply);
  const controller = new AbortController();
  let ended;
  state.busy = { controller, reply, done: new Promise((resolve) => { ended = resolve; }) };
  const el = appendMessage(reply);
  el.setAttribute("aria-busy", "true"); // a screen reader reads it once it is complete
  $("status").textContent = "Replying…";
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
      showBanner(`${e.message}. What arrived is kept.`);
    } else {
      ok = false;
      // a send that got no reply: its text is back in the composer, Retry sends it again
      showBanner(e instanceof Unreachable || e instanceof ApiError ? e.message : String(e),
                 resend ? () => run({ resend: true }) : () => $("composer").requestSubmit());
    }
  }
  const finished = performance.now();
  // the server's counts (on every chunk too, so a stopped reply has them); the times are
  // this page's
  if (usage) {
    const stats = { completion: usage.completion_tokens, prompt: usage.prompt_tokens };
    const cached = usage.prompt_tokens_details?.cached_tokens;
    if (cached !== undefined) stats.cached = cached;
    if (first !== null) {
      stats.ttft = (first - started) / 1000;
      if (stats.completion > 1 && finished > first) {
        stats.tps = (stats.completion - 1) / ((finished - first) / 1000);
      }
    }
    reply.stats = stats;
  }
  state.busy = null;
  setBusy(false);
  el.removeAttribute("aria-busy");
  $("status").textContent = !ok ? "No reply" : reply.stopped ? "Reply stopped"
    : reply.interrupted ? "Reply interrupted" : "Reply finished";
  if (!ok) {
    state.conv.messages.splice(state.conv.messages.indexOf(reply), 1);
    if (resend) saveConv();
    renderMessages();
  } else {
    saveConv();
    finishReply(el, reply);
  }
  ended();
  if (ok && !reply.stopped && !reply.interrupted) await answerCalls(reply, el);
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

/** Send hidden and Stop shown while a reply streams or a round of tool calls runs. */
export function setBusy(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  document.body.classList.toggle("busy", on);
}

function stop() {
  state.busy?.controller.abort();
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
document.addEventListener("keydown", (e) => { // Esc: stop a reply, else cancel an edit,
  if (e.key !== "Escape" || e.defaultPrevented) return; // else close the settings
  if (state.busy) stop();
  else if (document.body.classList.contains("sidebar-open")) showSidebar(false);
  else if (document.querySelector(".edit-box")) renderMessages();
  else if (!$("settings").hidden) toggleSettings(false);
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
