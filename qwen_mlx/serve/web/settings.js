// The settings panel (sampling, thinking, tools, the system prompt) and the request body it
// shapes.

import { ApiError } from "./api.js";
import { saveConv, trySave } from "./conversations.js";
import { $ } from "./dom.js";
import { state } from "./state.js";
import * as store from "./store.js";
import { offered } from "./tools.js";

export const SAMPLING = ["temperature", "top_p", "top_k", "max_tokens"];

export function loadSettingsIntoForm() {
  for (const name of SAMPLING) $(name).value = state.settings[name] ?? "";
  $("thinking").checked = state.settings.thinking ?? true;
  $("tools").value = state.settings.tools ?? "";
}

function saveSettingsFromForm() {
  state.settings = { thinking: $("thinking").checked, tools: $("tools").value };
  for (const name of SAMPLING) {
    if ($(name).value !== "") state.settings[name] = Number($(name).value);
  }
  trySave(() => store.saveSettings(state.settings));
}

for (const id of [...SAMPLING, "thinking", "tools"]) {
  $(id).addEventListener("change", saveSettingsFromForm);
}

$("system").addEventListener("change", () => {
  state.conv.system = $("system").value;
  saveConv();
});

/** Open or close the settings panel (`open`: which; by default the other state). */
export function toggleSettings(open = $("settings").hidden) {
  $("settings").hidden = !open;
  $("settings-toggle").setAttribute("aria-expanded", String(open));
}

$("settings-toggle").addEventListener("click", () => toggleSettings());

/** The request body for the conversation so far (throws ApiError for bad tools JSON). */
export function requestBody() {
  const messages = [];
  if (state.conv.system.trim()) messages.push({ role: "system", content: state.conv.system });
  for (const m of state.conv.messages) {
    if (store.messageProblem(m)) continue; // drawn as damaged, never sent
    if (m.role === "assistant" && !m.content && !m.tool_calls?.length) continue;
    const out = { role: m.role, content: m.content };
    if (m.tool_calls?.length) out.tool_calls = m.tool_calls;
    if (m.role === "tool" && m.tool_call_id) out.tool_call_id = m.tool_call_id;
    messages.push(out);
  }
  const body = { model: state.model.id, messages, stream: true,
                 // the counts on every chunk: a reply stopped midway still has them
                 stream_options: { include_usage: true, continuous_usage_stats: true } };
  for (const name of SAMPLING) {
    if (state.settings[name] !== undefined) body[name] = state.settings[name];
  }
  if (state.model.thinking && state.settings.thinking === false) {
    body.chat_template_kwargs = { enable_thinking: false };
  }
  if ((state.settings.tools || "").trim()) {
    let tools;
    try {
      tools = JSON.parse(state.settings.tools);
    } catch (e) {
      throw new ApiError(`the Tools setting is not valid JSON: ${e.message}`, 0);
    }
    if (!Array.isArray(tools)) throw new ApiError("the Tools setting must be a JSON list", 0);
    body.tools = tools;
  }
  const mine = new Set((body.tools ?? []).map((t) => t.function?.name));
  const served = offered().filter((t) => !mine.has(t.function.name));
  if (served.length) body.tools = [...(body.tools ?? []), ...served];
  return body;
}
