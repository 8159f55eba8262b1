// What the page holds, in one object every module shares: the API key, the model the server
// serves, the settings, the open conversation (saved to localStorage after every change), the
// reply being streamed and the files waiting for the next message.

import { Api } from "./api.js";
import * as store from "./store.js";

export const state = {
  apiKey: store.loadKey(),
  model: { id: "", defaults: {}, thinking: false, models: [] },
  settings: store.loadSettings(),
  conv: null,
  busy: null, // {controller, reply, done} while a reply streams (reply null: tool calls run)
  pendingFiles: [], // [{name, text}] attached to the next message
  pageTools: [], // the server's tools for this page: [{name, server, description, parameters}]
  alwaysTools: new Set(), // tools the user allowed for as long as the page is open
  alwaysSampling: new Set(), // servers whose requests for a reply the model answers unasked
  mcpPrompts: [], // the servers' prompts: [{server, name, description, arguments}]
};

export const api = new Api(() => state.apiKey);

/** Stop the reply being streamed or the tool calls running, if any, and wait until it is
 * saved as it stands. */
export async function stopReply() {
  if (!state.busy) return;
  state.busy.controller.abort();
  await state.busy.done;
}
