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

/** The conversation as Markdown: a heading per turn, replies as the model wrote them. */
export function asMarkdown(conv) {
  const parts = [`# ${titleOf(conv)}`];
  if (conv.system) parts.push(`## System\n\n${conv.system}`);
  for (const m of conv.messages) {
    let text = `## ${m.role === "user" ? "User" : "Assistant"}\n\n${m.content}`;
    for (const call of m.tool_calls ?? []) {
      text += `\n\n\`\`\`json\n${JSON.stringify({ tool_call: call.function }, null, 2)}\n\`\`\``;
    }
    parts.push(text);
  }
  return parts.join("\n\n") + "\n";
}
