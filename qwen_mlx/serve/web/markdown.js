// Model output -> safe HTML: Markdown (marked), math (KaTeX), code highlighting
// (highlight.js), then DOMPurify over the whole result. Nothing the model writes reaches the
// page without the sanitizer; the page's Content-Security-Policy is the second wall.

const { marked, DOMPurify, hljs, katex } = window;

// Math first: Markdown would eat the backslashes of \( \) and \[ \] and the underscores of
// subscripts. Inline $...$ needs a non-space after the opening $ so prices ($5 and $10) stay text.
const MATH = [
  { re: /^\$\$([\s\S]+?)\$\$/, display: true },
  { re: /^\\\[([\s\S]+?)\\\]/, display: true },
  { re: /^\\\(([\s\S]+?)\\\)/, display: false },
  { re: /^\$(?=\S)([^$\n]+?)(?<=\S)\$(?!\d)/, display: false },
];

function tex(source, display) {
  try {
    return katex.renderToString(source, { displayMode: display, throwOnError: false,
                                          output: "htmlAndMathml" });
  } catch {
    return null;
  }
}

const math = {
  name: "math",
  level: "inline",
  start(src) {
    const at = src.search(/\$|\\\(|\\\[/);
    return at < 0 ? undefined : at;
  },
  tokenizer(src) {
    for (const { re, display } of MATH) {
      const m = re.exec(src);
      if (m) return { type: "math", raw: m[0], text: m[1].trim(), display };
    }
    return undefined;
  },
  renderer(token) {
    return tex(token.text, token.display) ?? escapeHtml(token.raw);
  },
};

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
                                            '"': "&quot;", "'": "&#39;" })[c]);
}

marked.use({
  gfm: true,
  breaks: false,
  extensions: [math],
  renderer: {
    code({ text, lang }) {
      const language = (lang || "").trim().split(/\s+/)[0];
      let body;
      if (language && hljs.getLanguage(language)) {
        body = hljs.highlight(text, { language, ignoreIllegals: true }).value;
      } else {
        body = escapeHtml(text);
      }
      const label = language ? `<span class="lang">${escapeHtml(language)}</span>` : "";
      return `<div class="code"><div class="code-head">${label}<span class="spacer"></span>` +
             `<button type="button" class="copy-code">Copy</button></div>` +
             `<pre><code class="hljs">${body}</code></pre></div>`;
    },
    // HTML the model writes is shown as text, as it wrote it, never parsed into the page
    html({ text }) {
      return escapeHtml(text);
    },
    // a picture in a reply would be fetched from wherever the model points: shown as a link
    image({ href, text }) {
      return `<a href="${escapeHtml(href || "")}">${escapeHtml(text || href || "image")}</a>`;
    },
  },
});

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

// (style attributes stay: KaTeX positions its glyphs with them)
const PURIFY = {
  FORBID_TAGS: ["style", "form", "input", "textarea", "select", "img", "video", "audio",
                "iframe", "object", "embed", "link", "meta", "base", "dialog"],
  ALLOW_DATA_ATTR: false,
};

/** Markdown text -> sanitized HTML string. */
export function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(text), PURIFY);
}

/** A cache of one text's rendered top-level blocks (paragraphs, lists, code blocks...). */
export function blockCache() {
  return { text: "", blocks: [], generation: 0 };
}

function renderTokens(tokens, links) {
  const list = [...tokens];
  list.links = links;
  return DOMPurify.sanitize(marked.parser(list), PURIFY);
}

/** Markdown text -> {blocks, tail}: the sanitized HTML of each finished top-level block,
 * kept in `cache` (from blockCache), and of the last block, which more text may still
 * change. A block is finished once a later one has begun, so while a reply streams only
 * its last block is parsed and sanitized again: a redraw costs the size of that block, not
 * of the reply. Text that does not extend the cached text starts the cache again. */
export function renderBlocks(text, cache) {
  if (!text.startsWith(cache.text)) {
    Object.assign(cache, { text: "", blocks: [], generation: cache.generation + 1 });
  }
  const rest = text.slice(cache.text.length);
  const tokens = marked.lexer(rest);
  if (tokens.map((t) => t.raw).join("") !== rest) { // a text the lexer rewrote (\r\n)
    return { blocks: [], tail: renderMarkdown(text), generation: cache.generation };
  }
  for (const token of tokens.slice(0, -1)) {
    cache.blocks.push(renderTokens([token], tokens.links));
    cache.text += token.raw;
  }
  const last = tokens.at(-1);
  return { blocks: cache.blocks, tail: last ? renderTokens([last], tokens.links) : "",
           generation: cache.generation };
}

/** A reply's parts: the thinking (null when there is none), the answer, whether the
 * thinking is still open, and raw <tool_call> blocks the server did not parse (no tools
 * were offered) as {name, arguments} objects or text. */
export function splitReply(text) {
  let thinking = null, answer = text, thinkingOpen = false;
  const trimmed = text.trimStart();
  if (trimmed.startsWith("<think>")) {
    const rest = trimmed.slice("<think>".length);
    const end = rest.indexOf("</think>");
    if (end < 0) {
      [thinking, answer, thinkingOpen] = [rest, "", true];
    } else {
      [thinking, answer] = [rest.slice(0, end), rest.slice(end + "</think>".length)];
    }
  } else if (text.includes("</think>")) { // the template opened the block in the prompt
    const end = text.indexOf("</think>");
    [thinking, answer] = [text.slice(0, end), text.slice(end + "</think>".length)];
  }
  const calls = [];
  answer = answer.replace(/<tool_call>([\s\S]*?)(<\/tool_call>|$)/g, (_, body) => {
    try {
      const call = JSON.parse(body);
      calls.push({ name: String(call.name ?? "?"), arguments: call.arguments ?? {} });
    } catch {
      calls.push({ name: "tool call", arguments: body.trim() });
    }
    return "";
  });
  return { thinking: thinking?.trim() ?? null, answer: answer.trim(), thinkingOpen, calls };
}
