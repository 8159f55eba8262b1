// The server: its model and defaults (connect), and the API key asked for while it answers 401.

import { NeedsKey } from "./api.js";
import { $, hideBanner, showBanner } from "./dom.js";
import { SAMPLING } from "./settings.js";
import { api, state } from "./state.js";
import * as store from "./store.js";
import { loadTools } from "./tools.js";

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
  state.apiKey = $("key").value.trim();
  store.saveKey(state.apiKey);
  const waiters = keyWaiters || [];
  keyWaiters = null;
  waiters.forEach((resolve) => resolve());
});

$("key-dialog").addEventListener("cancel", (e) => e.preventDefault()); // nothing works without it

/** Run `call`, asking for the key again while the server answers 401. */
export async function withKey(call) {
  for (;;) {
    try {
      return await call();
    } catch (e) {
      if (!(e instanceof NeedsKey)) throw e;
      await askKey(state.apiKey ? `The server refused that key: ${e.message}` : "");
    }
  }
}

/** Connect to the server, talking to `wanted` (a conversation's model) if it serves it. With
 * several models, the picker lists them (● loaded); /api/show loads the one picked. */
export async function connect(wanted) {
  try {
    state.model = await withKey(() => api.model(wanted));
    hideBanner();
  } catch (e) {
    $("model-name").textContent = "not connected";
    showBanner(e.message);
    return;
  }
  $("model-name").textContent = state.model.id;
  renderPicker();
  document.title = `${state.model.id} · qwen-mlx chat`;
  for (const name of SAMPLING) {
    const value = state.model.defaults[name];
    $(name).placeholder = value === undefined ? "server default" : String(value);
  }
  $("thinking-label").hidden = !state.model.thinking;
  if (state.conv) state.conv.model = state.model.id; // saved with its next change
  await loadTools();
}

function renderPicker() {
  const picker = $("model-picker");
  picker.hidden = state.model.models.length < 2;
  $("model-name").hidden = !picker.hidden;
  picker.replaceChildren(...state.model.models.map((m) => {
    const option = document.createElement("option");
    option.value = m.id;
    // the one picked is loaded by /api/show as it is picked
    option.textContent = m.loaded || m.id === state.model.id ? `${m.id} ●` : m.id;
    option.selected = m.id === state.model.id;
    return option;
  }));
}

$("model-picker").addEventListener("change", () => connect($("model-picker").value));
