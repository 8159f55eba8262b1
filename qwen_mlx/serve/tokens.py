"""POST /tokenize and POST /detokenize, in llama.cpp's server's shapes: tools that count or
inspect tokens (evaluation harnesses, prompt budgeting) use them.

``/tokenize {"content": text, "add_special": false, "with_pieces": false}`` -> ``{"tokens":
[ids]}``, or with pieces ``{"tokens": [{"id": id, "piece": text}]}`` (a piece that is not
whole UTF-8 is its list of bytes, as llama.cpp gives it). ``/detokenize {"tokens": [ids]}``
-> ``{"content": text}``. The text is tokenized as it is (no chat template); Qwen's
tokenizer adds no special tokens, so ``add_special`` changes nothing but is accepted.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from .openai import read_json
from .server import RequestError, Server, flag, refuse_unsupported


async def tokenize(server: Server, request: Request) -> JSONResponse:
    body = await read_json(request, server.max_body)

    def build() -> dict:
        refuse_unsupported(body, {"content", "add_special", "with_pieces", "model"}, {})
        content = body.get("content")
        if not isinstance(content, str):
            raise RequestError(400, "'content' must be text", param="content")
        flag(body, "add_special")
        ids = server.model.encode(content, raw=True) if content else []
        if not flag(body, "with_pieces"):
            return {"tokens": ids}
        pieces = []
        for token in ids:
            data = server.token_text.bytes(token)
            try:
                piece = data.decode("utf-8")
            except UnicodeDecodeError:
                piece = list(data)
            pieces.append({"id": token, "piece": piece})
        return {"tokens": pieces}

    return JSONResponse(await server.validate(build))


async def detokenize(server: Server, request: Request) -> JSONResponse:
    body = await read_json(request, server.max_body)

    def build() -> dict:
        refuse_unsupported(body, {"tokens", "model"}, {})
        tokens, vocab = body.get("tokens"), server.model.config.get("vocab_size", 0)
        if not isinstance(tokens, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                for t in tokens):
            raise RequestError(400, f"'tokens' must be a list of token ids (0 to {vocab - 1})",
                               param="tokens")
        return {"content": server.model.decode(tokens)}

    return JSONResponse(await server.validate(build))
