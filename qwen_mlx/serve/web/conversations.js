// The conversations in the sidebar: open, rename, delete, export, and saving the open one.

import { connect } from "./connection.js";
import { $, button, showBanner } from "./dom.js";
import { renderMessages } from "./messages.js";
import { state, stopReply } from "./state.js";
import * as store from "./store.js";

export function trySave(save) {
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

export function saveConv(touch = true) {
  if (state.conv.messages.length || state.conv.title || state.conv.system) {
    trySave(() => store.saveConversation(state.conv, touch));
  }
  renderSidebar();
}

/** Open a conversation (a new one without `id`). A reply still streaming is stopped first:
 * what arrived is kept, marked stopped, in its own conversation. */
export async function openConversation(id) {
  await stopReply();
  state.conv = (id && store.loadConversation(id)) || store.newConversation();
  if (state.conv.model && state.conv.model !== state.model.id && state.model.models?.length > 1) {
    await connect(state.conv.model); // the model it was talking to
  } else if (state.model.id) {
    state.conv.model ??= state.model.id;
  }
  $("system").value = state.conv.system;
  renderMessages(true, true);
  renderSidebar();
  $("input").focus();
}

function renderSidebar() {
  const list = $("conversations");
  list.replaceChildren();
  const items = store.listConversations();
  if (state.conv && !items.some((c) => c.id === state.conv.id)) {
    items.unshift({ id: state.conv.id, title: store.titleOf(state.conv) });
  }
  for (const item of items) {
    const li = document.createElement("li");
    li.dataset.id = item.id;
    li.classList.toggle("current", state.conv && item.id === state.conv.id);
    const title = document.createElement("button");
    title.type = "button";
    title.className = "title";
    title.textContent = item.title || "New chat";
    title.addEventListener("click", () => openConversation(item.id));
    const rename = button("✎", "rename", () => startRename(li, item));
    const name = item.title || "New chat";
    rename.title = "Rename";
    rename.setAttribute("aria-label", `Rename ${name}`);
    const remove = button("×", "delete", () => removeConversation(item));
    remove.title = "Delete";
    remove.setAttribute("aria-label", `Delete ${name}`);
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
    const target = item.id === state.conv.id ? state.conv : store.loadConversation(item.id);
    if (keep && target) {
      target.title = input.value.trim();
      if (target === state.conv) saveConv(false);
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

async function removeConversation(item) {
  if (!confirm(`Delete "${item.title || "New chat"}"?`)) return;
  if (item.id === state.conv.id) await stopReply(); // its reply stops (and is saved) first
  store.deleteConversation(item.id);
  if (item.id === state.conv.id) openConversation(store.listConversations()[0]?.id);
  else renderSidebar();
}

$("new-chat").addEventListener("click", () => openConversation(null));

/** On a phone the sidebar slides over the page: opened by the menu button, closed by a
 * choice, a tap beside it, or Esc. */
export function showSidebar(open) {
  document.body.classList.toggle("sidebar-open", open);
  $("menu").setAttribute("aria-expanded", String(open));
  if (open) $("new-chat").focus();
}

$("menu").addEventListener("click", () => showSidebar(true));
$("sidebar").addEventListener("click", (e) => {
  if (e.target.closest("button.title, #new-chat")) showSidebar(false);
});
document.addEventListener("click", (e) => {
  if (document.body.classList.contains("sidebar-open") && !e.target.closest("#sidebar, #menu")) {
    showSidebar(false);
  }
});
$("more").addEventListener("click", () => {
  const open = !$("export-menu").classList.contains("open");
  $("export-menu").classList.toggle("open", open);
  $("more").setAttribute("aria-expanded", String(open));
});

window.addEventListener("storage", (e) => { // another tab saved: keep the list current
  if (e.key === "qwen-mlx.conversations") renderSidebar();
});
