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

/** The conversations' summaries, newest first: [{id, title, updated}] (entries that are
 * not such summaries are passed over: the sidebar is never blank). */
export function listConversations() {
  const index = read(INDEX, []);
  return (Array.isArray(index) ? index : [])
    .filter((c) => c && typeof c.id === "string")
    .sort((a, b) => (b.updated || 0) - (a.updated || 0));
}

/** A stored conversation, or null when there is none or it is not one. Its messages are
 * kept as stored; one that fails `messageProblem` is drawn as damaged and never sent. */
export function loadConversation(id) {
  const conv = read(PREFIX + "conversation." + id, null);
  if (!conv || typeof conv !== "object" || !Array.isArray(conv.messages)) return null;
  for (const key of ["title", "system"]) {
    if (typeof conv[key] !== "string") conv[key] = "";
  }
  return conv;
}

export function newConversation() {
  const id = Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
  return { id, title: "", system: "", messages: [], created: Date.now(), updated: Date.now() };
}

/** A conversation's title: the one given, else the start of its first message. */
export function titleOf(conv) {
  if (conv.title) return conv.title;
  const first = conv.messages.find((m) => m?.role === "user" && !messageProblem(m));
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

const isText = (v) => typeof v === "string";
const isNumber = (v) => typeof v === "number" && Number.isFinite(v);
const isFlag = (v) => typeof v === "boolean";
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const STATS = new Set(["completion", "prompt", "cached", "ttft", "tps"]);
const isCall = (c) => isObject(c) && (c.id === undefined || isText(c.id)) &&
  (c.type === undefined || c.type === "function") && isObject(c.function) &&
  isText(c.function.name) && isText(c.function.arguments);

// Every field the page writes on a message, with its type, in words for the error.
const FIELDS = {
  role: [(v) => ROLES.has(v), "user, assistant or tool"],
  content: [isText, "a text"],
  shown: [isText, "a text"],
  attached: [isText, "a text"],
  files: [(v) => Array.isArray(v) && v.every(isText), "a list of file names"],
  finish: [isText, "a text"],
  stopped: [isFlag, "true or false"],
  interrupted: [isFlag, "true or false"],
  stats: [(v) => isObject(v) && Object.entries(v).every(([k, x]) => STATS.has(k) && isNumber(x)),
          "counts and times as numbers (completion, prompt, cached, ttft, tps)"],
  tool_calls: [(v) => Array.isArray(v) && v.every(isCall),
               "a list of function calls ({id, type, function: {name, arguments}})"],
  tool_call_id: [isText, "a text"],
  name: [isText, "a text"],
  server: [isText, "a text"],
  error: [isFlag, "true or false"],
};

/** Why a message, stored or imported, cannot be drawn or sent (null when it can), in words
 * that follow "message N". */
export function messageProblem(m) {
  if (!isObject(m) || !ROLES.has(m.role) || !isText(m.content)) {
    return "needs a role (user, assistant or tool) and a text content";
  }
  for (const [key, value] of Object.entries(m)) {
    if (!(key in FIELDS)) return `has a field the page does not know: "${key}"`;
    const [valid, what] = FIELDS[key];
    if (value !== undefined && !valid(value)) return `has a "${key}" that is not ${what}`;
  }
  return null;
}

/** A conversation read from an exported JSON file, checked field by field, as a new
 * conversation (its own id: an import never replaces one already here). Throws an Error
 * naming what is wrong. */
export function imported(data) {
  if (!isObject(data) || !Array.isArray(data.messages)) {
    throw new Error("it has no \"messages\" list (export a conversation as JSON to get one)");
  }
  data.messages.forEach((m, i) => {
    const why = messageProblem(m);
    if (why) throw new Error(`message ${i + 1} ${why}`);
  });
  for (const key of ["title", "system"]) {
    if (data[key] !== undefined && !isText(data[key])) {
      throw new Error(`its "${key}" is not a text`);
    }
  }
  return { ...newConversation(), title: data.title ?? "", system: data.system ?? "",
           messages: data.messages };
}
