// Tools the server offers the page (`serve --mcp`): offered to the model with every request,
// and each call the model makes is shown with Allow once / Always / Deny; an allowed call
// runs on the server (POST /web/tools/call), its result goes back as a tool message and
// the model goes on. Arguments and results are shown as text, never as HTML.

import { $, button, showBanner } from "./dom.js";
import { appendMessage } from "./messages.js";
import { saveConv } from "./conversations.js";
import { run } from "./reply.js";
import { api, state } from "./state.js";

const MAX_ROUNDS = 8; // rounds of calls after one message, as `qwen-mlx chat` allows
const DENIED = "the user did not allow this call";

/** The server's tools for the page ([] from a server without them). */
export async function loadTools() {
  try {
    state.pageTools = (await api.json("/web/tools")).tools ?? [];
  } catch {
    state.pageTools = [];
  }
  $("tools-note").hidden = !state.pageTools.length;
  $("tools-note").textContent = state.pageTools.length
    ? `Tools from the server (each call asks first): ${state.pageTools
      .map((t) => `${t.name} (${t.server})`).join(", ")}` : "";
}

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
 * an error. */
export async function answerCalls(reply, el) {
  const calls = reply.tool_calls ?? [];
  const mine = settingsTools();
  if (!calls.length || !state.pageTools.length ||
      calls.some((c) => mine.has(c.function.name))) return;
  const messages = state.conv.messages;
  const lastUser = messages.findLastIndex((m) => m.role === "user");
  const rounds = messages.slice(lastUser)
    .filter((m) => m.role === "assistant" && m.tool_calls?.length).length;
  if (rounds > MAX_ROUNDS) {
    showBanner(`Stopped after ${MAX_ROUNDS} rounds of tool calls; send a message to go on.`);
    return;
  }
  const conv = state.conv;
  for (const call of calls) {
    const name = call.function.name;
    const result = toolOf(name) ? await answer(el, call, conv) : unknown(name);
    if (!result) return; // another conversation was opened meanwhile
    const m = { role: "tool", tool_call_id: call.id, name, server: result.server,
                content: result.content, error: result.error };
    messages.push(m);
    saveConv();
    appendMessage(m);
  }
  await run({ resend: true });
}

/** Ask about one call of the server's tools and run it if allowed -> its result (null when
 * the user left for another conversation meanwhile). */
async function answer(el, call, conv) {
  const name = call.function.name;
  const choice = state.alwaysTools.has(name) ? "always" : await ask(el, call);
  if (state.conv !== conv) return null;
  if (choice === "always") state.alwaysTools.add(name);
  if (choice === "deny") return { content: DENIED, error: true, server: toolOf(name).server };
  try {
    return await api.json("/web/tools/call", { method: "POST", body: {
      id: call.id, name, arguments: parsed(call.function.arguments) } });
  } catch (e) {
    return { content: `error: ${e.message}`, error: true, server: toolOf(name).server };
  }
}

function parsed(text) {
  try { return JSON.parse(text || "{}"); } catch { return text; }
}

/** Allow once / Always / Deny, under the reply; resolves with "once", "always" or "deny". */
function ask(el, call) {
  return new Promise((resolve) => {
    const box = document.createElement("div");
    box.className = "approval";
    box.setAttribute("role", "group");
    const question = document.createElement("span");
    question.textContent = `Run ${call.function.name} (${toolOf(call.function.name).server})?`;
    const answer = (choice) => () => { box.remove(); resolve(choice); };
    box.append(question, button("Allow once", "allow-once", answer("once")),
               button("Always", "allow-always", answer("always")),
               button("Deny", "deny", answer("deny")));
    el.append(box);
    box.querySelector(".allow-once").focus();
  });
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
