// Conversations and settings in the browser's localStorage: nothing leaves the machine.
// One key per conversation, so a save rewrites one conversation, not all of them.

const PREFIX = "qwen-mlx.";
const INDEX = PREFIX + "conversations";

export class StorageFull extends Error {}

function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (e) {
    if (e.name === "QuotaExceededError") {
      throw new StorageFull("the browser's storage for this page is full: this conversation " +
                            "is not saved (export it, then delete old conversations)");
    }
    throw e;
  }
}

function read(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value ?? fallback;
  } catch {
    return fallback;
  }
}

/** The conversations' summaries, newest first: [{id, title, updated}]. */
export function listConversations() {
  return read(INDEX, []).sort((a, b) => b.updated - a.updated);
}

export function loadConversation(id) {
  return read(PREFIX + "conversation." + id, null);
}

export function newConversation() {
  const id = Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
  return { id, title: "", system: "", messages: [], created: Date.now(), updated: Date.now() };
}

/** A conversation's title: the one given, else the start of its first message. */
export function titleOf(conv) {
  if (conv.title) return conv.title;
  const first = conv.messages.find((m) => m.role === "user");
  const text = first ? (first.shown ?? first.content) : "";
  return text.trim().split("\n")[0].slice(0, 60) || "New chat";
}

/** Save; `touch` moves it to the top of the list (a new message does, a rename not). */
export function saveConversation(conv, touch = true) {
  if (touch) conv.updated = Date.now();
  write(PREFIX + "conversation." + conv.id, conv);
  const index = read(INDEX, []).filter((c) => c.id !== conv.id);
  index.push({ id: conv.id, title: titleOf(conv), updated: conv.updated });
  write(INDEX, index);
}

export function deleteConversation(id) {
  localStorage.removeItem(PREFIX + "conversation." + id);
  write(INDEX, read(INDEX, []).filter((c) => c.id !== id));
}

export function loadSettings() {
  return read(PREFIX + "settings", {});
}

export function saveSettings(settings) {
  write(PREFIX + "settings", settings);
}

export function loadKey() {
  return localStorage.getItem(PREFIX + "apiKey") || "";
}

export function saveKey(key) {
  localStorage.setItem(PREFIX + "apiKey", key);
}

const ROLES = new Set(["user", "assistant", "tool"]);

/** A conversation read from an exported JSON file, checked field by field, as a new
 * conversation (its own id: an import never replaces one already here). Throws an Error
 * naming what is wrong. */
export function imported(data) {
  if (!data || typeof data !== "object" || !Array.isArray(data.messages)) {
    throw new Error("it has no \"messages\" list (export a conversation as JSON to get one)");
  }
  const messages = data.messages.map((m, i) => {
    if (!m || !ROLES.has(m.role) || typeof m.content !== "string") {
      throw new Error(`message ${i + 1} needs a role (user, assistant or tool) and a text ` +
                      "content");
    }
    return m;
  });
  const text = (key) => (typeof data[key] === "string" ? data[key] : "");
  return { ...newConversation(), title: text("title"), system: text("system"), messages };
}
