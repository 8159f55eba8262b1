// Tools the server offers the page (`serve --mcp`): offered to the model with every request,
// and each call the model makes is shown with Allow once / Always / Deny; an allowed call
// runs on the server (POST /web/tools/call), its result goes back as a tool message and
// the model goes on. Arguments and results are shown as text, never as HTML. A round of
// calls is busy as a reply is: Send waits, and Stop or Esc cancels the call (as Ctrl-C does
// in the terminal, with its words).

import { renderAttachments } from "./attachments.js";
import { $, button, showBanner } from "./dom.js";
import { appendMessage } from "./messages.js";
import { saveConv } from "./conversations.js";
import { run, setBusy } from "./reply.js";
import { api, state } from "./state.js";

const MAX_ROUNDS = 8; // rounds of calls after one message, as `qwen-mlx chat` allows
// as qwen_mlx/tools/loop.py says them
const DENIED = "the user did not allow this call";
const CANCELLED = "the user cancelled this call";
const NOT_RUN = "not run: the user stopped the calls";
const CANCEL = Symbol("cancel");

/** The server's tools for the page ([] from a server without them). */
export async function loadTools() {
  try {
    state.pageTools = (await api.json("/web/tools")).tools ?? [];
  } catch {
    state.pageTools = [];
  }
  for (const t of state.pageTools) { // its server's file lets it run without asking
    if (t.approved) state.alwaysTools.add(t.name);
  }
  $("tools-note").hidden = !state.pageTools.length;
  $("tools-note").textContent = state.pageTools.length
    ? `Tools from the server (each call asks first): ${state.pageTools
      .map((t) => `${t.name} (${t.server})`).join(", ")}` : "";
  if (state.pageTools.length) await loadExtras();
}

/** The servers' resources (attached to the next message, as a file is) and prompts (put
 * in the composer, their arguments asked in a small form), in one picker. */
async function loadExtras() {
  let extras = { resources: [], prompts: [] };
  try {
    extras = await api.json("/web/tools/extras");
  } catch {
    // a server without tools, or without the route: no picker
  }
  const pick = $("mcp-pick");
  pick.replaceChildren(new Option("Resources and prompts…", ""));
  const group = (label, items, value, text) => {
    if (!items.length) return;
    const g = document.createElement("optgroup");
    g.label = label;
    for (const item of items) g.append(new Option(text(item), value(item)));
    pick.append(g);
  };
  group("Attach a resource", extras.resources, (r) => `resource:${r.uri}`,
        (r) => `${r.name} (${r.server}: ${r.uri})`);
  group("Use a prompt", extras.prompts, (p) => `prompt:${p.name}`,
        (p) => `${p.name} (${p.server})${p.description ? `: ${p.description}` : ""}`);
  pick.hidden = !extras.resources.length && !extras.prompts.length;
  state.mcpPrompts = extras.prompts;
}

$("mcp-pick").addEventListener("change", async (e) => {
  const [kind, ...rest] = e.target.value.split(":");
  const value = rest.join(":");
  e.target.value = "";
  try {
    if (kind === "resource") {
      const { text } = await api.json("/web/tools/read", { method: "POST", body: { uri: value } });
      state.pendingFiles.push({ name: value, text });
      renderAttachments();
    } else if (kind === "prompt") {
      const p = state.mcpPrompts.find((x) => x.name === value);
      const fill = async (args) => {
        const { text } = await api.json("/web/tools/prompt", { method: "POST",
                                                               body: { name: value, arguments: args } });
        $("input").value = text;
        $("input").focus();
      };
      if (!p.arguments.length) return await fill({});
      const schema = { properties: Object.fromEntries(p.arguments.map((a) => [a.name,
        { type: "string", title: a.name, description: a.description }])),
                       required: p.arguments.filter((a) => a.required).map((a) => a.name) };
      $("composer").before(formElement({ heading: `The prompt ${p.name} (${p.server})`,
                                         schema }, (action, args) => {
        if (action === "accept") fill(args).catch((err) => showBanner(err.message));
      }));
    }
  } catch (err) {
    showBanner(err.message);
  }
});

/** The page's tools in OpenAI's function format, for a request. */
export function offered() {
  return state.pageTools.map((t) => ({ type: "function", function: {
    name: t.name, description: t.description, parameters: t.parameters } }));
}

const toolOf = (name) => state.pageTools.find((t) => t.name === name);

/** The names of the tools the user listed in Settings (their calls are the user's to
 * answer). */
function settingsTools() {
  try {
    const tools = JSON.parse(state.settings.tools || "[]");
    return new Set(Array.isArray(tools) ? tools.map((t) => t?.function?.name) : []);
  } catch {
    return new Set();
  }
}

/** A call of a tool nobody offers: the model reads that it does not exist, as in the
 * terminal, instead of the page waiting for an answer that never comes. */
const unknown = (name) => ({
  content: `error: there is no tool named '${name}' (the tools: ${
    state.pageTools.map((t) => t.name).join(", ")})`, error: true });

/** After a reply: if it called the server's tools, ask about each, run the allowed ones,
 * and let the model go on with the results. Calls of tools the user listed in Settings stay
 * for the user to answer, as before; a call of a tool that no one offers is answered with
 * an error. Stop (or Esc, or opening another conversation) cancels the round: the call
 * asked about or running is "cancelled", the rest "not run", and the model waits for the
 * next message. */
export async function answerCalls(reply, el) {
  const calls = reply.tool_calls ?? [];
  const mine = settingsTools();
  if (!calls.length || !state.pageTools.length ||
      calls.some((c) => mine.has(c.function.name))) return;
  const messages = state.conv.messages;
  const lastUser = messages.findLastIndex((m) => m?.role === "user");
  const rounds = messages.slice(lastUser)
    .filter((m) => m?.role === "assistant" && m.tool_calls?.length).length;
  if (rounds > MAX_ROUNDS) {
    showBanner(`Stopped after ${MAX_ROUNDS} rounds of tool calls; send a message to go on.`);
    return;
  }
  const controller = new AbortController();
  let ended;
  state.busy = { controller, reply: null, done: new Promise((resolve) => { ended = resolve; }) };
  setBusy(true);
  let cancelled = false;
  try {
    for (const call of calls) {
      const name = call.function.name;
      let result = cancelled ? { content: NOT_RUN, error: true }
        : toolOf(name) ? await answer(el, call, controller.signal) : unknown(name);
      if (result === CANCEL) {
        cancelled = true;
        result = { content: CANCELLED, error: true };
      }
      const m = { role: "tool", tool_call_id: call.id, name,
                  server: result.server ?? toolOf(name)?.server, content: result.content,
                  error: result.error };
      messages.push(m);
      saveConv();
      appendMessage(m);
    }
  } finally {
    state.busy = null;
    setBusy(false);
    ended();
  }
  if (cancelled) {
    $("status").textContent = "Tool call cancelled";
    return;
  }
  await run({ resend: true });
}

/** Ask about one call of the server's tools and run it if allowed -> its result, or CANCEL
 * when the round was stopped meanwhile. */
async function answer(el, call, signal) {
  const name = call.function.name;
  const choice = state.alwaysTools.has(name) ? "always" : await ask(el, call, signal);
  if (choice === "cancel") return CANCEL;
  if (choice === "always") state.alwaysTools.add(name);
  if (choice === "deny") return { content: DENIED, error: true };
  const note = running(el, call);
  try {
    const response = await api.request("/web/tools/call", { method: "POST", signal, body: {
      id: call.id, name, arguments: parsed(call.function.arguments) } });
    let result = null;
    for await (const line of lines(response)) { // progress, forms, samples; then the result
      if (line.form) note.before(formElement(line.form, (action, content) =>
        reply(line.form.id, action, content)));
      else if (line.sample) askSample(note, line.sample);
      else if (line.progress !== undefined) showProgress(note, call, line);
      else result = line;
    }
    el.querySelectorAll(".tool-form").forEach((f) => f.remove()); // the call ended: gone
    return result ?? { content: "error: the server ended the call without a result",
                       error: true };
  } catch (e) {
    if (e.name === "AbortError") return CANCEL; // the server cancels it too
    return { content: `error: ${e.message}`, error: true };
  } finally {
    note.remove();
  }
}

/** The page's answer to a server's question during a call (a form, a sampling request). */
function reply(id, action, content) {
  api.json("/web/tools/form", { method: "POST", body: { id, action, content } })
    .catch((e) => showBanner(`The answer did not reach the server: ${e.message}`));
}

/** An MCP server asks the model for a reply (sampling): allowed once, always (for that
 * server, while the page is open) or denied, as a tool call is. Text is set as text. */
function askSample(note, sample) {
  if (state.alwaysSampling.has(sample.server)) {
    reply(sample.id, "accept");
    return;
  }
  const box = document.createElement("div");
  box.className = "tool-form tool-sample";
  const question = document.createElement("p");
  const count = `${sample.messages} message${sample.messages === 1 ? "" : "s"}`;
  question.textContent = `${sample.server} asks the model for a reply (${count}, up to ` +
    `${sample.max_tokens} tokens): ${sample.last}`;
  box.append(question);
  if (sample.system) {
    const system = document.createElement("p");
    system.className = "sample-system";
    system.textContent = `Its system prompt: ${sample.system}`;
    box.append(system);
  }
  const answer = (action, always = false) => {
    if (always) state.alwaysSampling.add(sample.server);
    box.remove();
    reply(sample.id, action);
  };
  box.append(button("Allow", "sample-allow", () => answer("accept")),
             button("Always", "sample-always", () => answer("accept", true)),
             button("Deny", "sample-deny", () => answer("decline")));
  note.before(box);
}

/** The JSON lines of a response, as they arrive. */
async function* lines(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 1);
      if (line) yield JSON.parse(line);
    }
  }
  if (buffer.trim()) yield JSON.parse(buffer);
}

/** A running call's progress, as its server reports it: "3/10" and its message. */
function showProgress(note, call, { progress, total, message }) {
  const done = total ? `${progress}/${total}` : `${progress}`;
  note.textContent = `Running ${call.function.name} (${toolOf(call.function.name).server}): ` +
    `${done}${message ? ` ${message}` : ""}… Stop or Esc cancels it.`;
}

/** "Running NAME (server)…" under the reply while a call runs. */
function running(el, call) {
  const note = document.createElement("div");
  note.className = "tool-running";
  note.setAttribute("role", "status");
  note.textContent = `Running ${call.function.name} (${toolOf(call.function.name).server})… ` +
    "Stop or Esc cancels it.";
  el.append(note);
  $("status").textContent = `Running ${call.function.name}`;
  return note;
}

function parsed(text) {
  try { return JSON.parse(text || "{}"); } catch { return text; }
}

/** Allow once / Always / Deny, under the reply; resolves with "once", "always" or "deny",
 * or "cancel" when the round is stopped first. */
function ask(el, call, signal) {
  return new Promise((resolve) => {
    const box = document.createElement("div");
    box.className = "approval";
    box.setAttribute("role", "group");
    const question = document.createElement("span");
    question.textContent = `Run ${call.function.name} (${toolOf(call.function.name).server})?`;
    const answer = (choice) => () => {
      signal.removeEventListener("abort", stopped);
      box.remove();
      resolve(choice);
    };
    const stopped = answer("cancel");
    if (signal.aborted) return stopped();
    signal.addEventListener("abort", stopped);
    box.append(question, button("Allow once", "allow-once", answer("once")),
               button("Always", "allow-always", answer("always")),
               button("Deny", "deny", answer("deny")));
    el.append(box);
    box.querySelector(".allow-once").focus();
  });
}

/** An MCP server's question (elicitation), or a prompt's arguments, as a small form: a
 * field per property of its flat schema (text, number, yes/no, one or several choices),
 * Submit / Decline / Cancel; ``onAnswer(action, content)`` gets the answer. Text is set as
 * text, never HTML. */
function formElement(form, onAnswer) {
  const box = document.createElement("form");
  box.className = "tool-form";
  const question = document.createElement("p");
  question.textContent = form.heading ?? `${form.server} asks: ${form.message}`;
  box.append(question);
  const required = new Set(form.schema?.required ?? []);
  const fields = Object.entries(form.schema?.properties ?? {});
  for (const [name, field] of fields) {
    const label = document.createElement("label");
    label.textContent = `${field.title ?? name}${required.has(name) ? "" : " (optional)"} `;
    label.append(input(name, field, required.has(name)));
    box.append(label);
  }
  const answer = (action) => {
    box.remove();
    onAnswer(action, action === "accept" ? values(box, fields) : undefined);
  };
  const submit = button("Submit", "form-submit", () => {});
  submit.type = "submit";
  box.append(submit, button("Decline", "form-decline", () => answer("decline")),
             button("Cancel", "form-cancel", () => answer("cancel")));
  box.addEventListener("submit", (e) => { e.preventDefault(); answer("accept"); });
  return box;
}

const choicesOf = (field) => {
  const item = field.type === "array" ? field.items ?? {} : field;
  return item.enum ?? (item.oneOf ?? item.anyOf)?.map((o) => o.const);
};

function input(name, field, required) {
  const choices = choicesOf(field);
  let el;
  if (choices) {
    el = document.createElement("select");
    el.multiple = field.type === "array";
    if (!required && !el.multiple) el.append(new Option("", ""));
    for (const c of choices) el.append(new Option(String(c), String(c)));
  } else {
    el = document.createElement("input");
    el.type = field.type === "boolean" ? "checkbox"
      : ["number", "integer"].includes(field.type) ? "number" : "text";
    if (field.type === "integer") el.step = "1";
    if (field.minimum !== undefined) el.min = field.minimum;
    if (field.maximum !== undefined) el.max = field.maximum;
  }
  el.name = name;
  el.required = required && field.type !== "boolean";
  return el;
}

/** The form's answers, typed as its schema says; an empty optional field is left out. */
function values(box, fields) {
  const out = {};
  for (const [name, field] of fields) {
    const el = box.querySelector(`[name="${CSS.escape(name)}"]`);
    if (field.type === "boolean") out[name] = el.checked;
    else if (el.multiple) out[name] = [...el.selectedOptions].map((o) => o.value);
    else if (el.value === "") continue;
    else if (["number", "integer"].includes(field.type)) out[name] = Number(el.value);
    else out[name] = el.value;
  }
  return out;
}

/** A tool message: a collapsible block naming its server and tool, its text as text. */
export function toolResultElement(m) {
  const block = document.createElement("details");
  block.className = `tool-result${m.error ? " error" : ""}`;
  const summary = document.createElement("summary");
  summary.textContent = `${m.server ?? "tool"} · ${m.name}: ${m.error ? "error" : "result"}`;
  const text = document.createElement("pre");
  text.textContent = m.content;
  block.append(summary, text);
  return block;
}
