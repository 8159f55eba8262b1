// The page's client of the public API (same origin): OpenAI's /v1 for chat, Ollama's
// /api/show for the model's defaults when the server has it. Errors are sorted by what the
// user can do about them: give a key, start the server, read the server's refusal.

/** The server answered with an error: its own text. */
export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** 401: the server wants an API key (or a different one). */
export class NeedsKey extends ApiError {}

/** No answer at all: the server is not running or not reachable. */
export class Unreachable extends Error {}

/** The reply started but its stream ended before the server finished it. */
export class Cut extends Error {}

async function errorText(response) {
  const raw = await response.text().catch(() => "");
  try {
    const body = JSON.parse(raw);
    const error = body.error;
    if (typeof error === "string") return error;
    if (error && typeof error.message === "string") return error.message;
  } catch { /* not JSON: the text itself */ }
  return raw.trim().slice(0, 500) || `HTTP ${response.status}`;
}

export class Api {
  constructor(getKey) {
    this.getKey = getKey;
  }

  async request(path, { method = "GET", body, signal } = {}) {
    const headers = { "Content-Type": "application/json" };
    const key = this.getKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    let response;
    try {
      response = await fetch(path, { method, headers, signal,
                                     body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new Unreachable(`cannot reach the server at ${location.origin}: is qwen-mlx serve ` +
                            `still running?`);
    }
    if (response.status === 401) throw new NeedsKey(await errorText(response), 401);
    if (!response.ok) throw new ApiError(await errorText(response), response.status);
    return response;
  }

  async json(path, options) {
    return (await this.request(path, options)).json();
  }

  /** The model to talk to, `wanted` if the server lists it, else its first: {id, defaults:
   * {temperature, top_p, top_k, max_tokens} or {}, thinking: whether it is a hybrid thinking
   * model, models: [{id, loaded}] every model the server may load}. */
  async model(wanted) {
    const listed = (await this.json("/v1/models")).data ?? [];
    const models = listed.map((m) => ({ id: m.id, loaded: m.loaded !== false }));
    const id = models.some((m) => m.id === wanted) ? wanted : models[0]?.id ?? "";
    const info = { id, defaults: {}, thinking: false, models };
    try { // Ollama's /api/show: not every OpenAI-compatible server has it
      const shown = await this.json("/api/show", { method: "POST", body: { model: id } });
      for (const line of (shown.parameters || "").split("\n")) {
        const [name, value] = line.trim().split(/\s+/);
        const key = name === "num_predict" ? "max_tokens" : name;
        if (["temperature", "top_p", "top_k", "max_tokens"].includes(key)) {
          info.defaults[key] = Number(value);
        }
      }
      info.thinking = (shown.capabilities || []).includes("thinking");
    } catch (e) {
      if (e instanceof NeedsKey || e instanceof Unreachable) throw e;
    }
    return info;
  }

  /** POST /v1/chat/completions, streamed: yields each chunk object; throws Cut when the
   * stream ends without the server's end mark, ApiError for an error event. */
  async *chat(body, signal) {
    const response = await this.request("/v1/chat/completions",
                                        { method: "POST", body, signal });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      let part;
      try {
        part = await reader.read();
      } catch (e) {
        if (signal.aborted) throw e;
        throw new Cut("the connection to the server was lost in the middle of the reply");
      }
      if (part.done) {
        throw new Cut("the server closed the connection before the reply ended");
      }
      buffer += part.value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new ApiError(chunk.error.message ?? String(chunk.error), 503);
          yield chunk;
        }
      }
    }
  }
}
