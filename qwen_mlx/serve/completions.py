"""OpenAI's legacy POST /v1/completions: raw prompts (no chat template) continued, for
editors and evaluation harnesses.

``prompt`` is one text or token-id list, or a list of them: one choice per prompt
(``index``), run together in the batch. ``echo`` puts the prompt before its continuation,
and with ``logprobs`` scores the prompt's own tokens (the first one's log-probability and
alternatives are null, as OpenAI's legacy API gave them); ``max_tokens: 0`` with ``echo``
scores without generating: lm-evaluation-harness's ``local-completions`` log-likelihoods.
Several prompts, and echo, are answered without streaming.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..engine import Stats
from .logprobs import legacy
from .openai import (SAMPLING, STREAM_HEADERS, common, read_json, running_usage, sampling,
                     sse, stream_error, usage)
from .server import Delta, RequestError, Server, flag, number, stop_list
from .worker import Ended

FIELDS = SAMPLING | {"prompt", "logprobs", "speculative", "echo"}
NO_OPS = {"suffix": lambda v: v in (None, ""), "best_of": lambda v: v in (None, 1),
          "logit_bias": lambda v: v in (None, {})}
MAX_PROMPTS = 256  # prompts in one request
DEFAULT_MAX_TOKENS = 16  # OpenAI's for this endpoint


def prompt_list(server: Server, prompt) -> list[tuple[list[int], str | None]]:
    """``prompt`` as (token ids, its text when given as text), one per prompt."""
    vocab = server.model.config.get("vocab_size", 0)

    def ids(value) -> bool:
        return isinstance(value, list) and bool(value) and all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in value)

    if isinstance(prompt, str) and prompt:
        return [(server.model.encode(prompt, raw=True), prompt)]
    if ids(prompt):
        return [(list(prompt), None)]
    if isinstance(prompt, list) and prompt and len(prompt) <= MAX_PROMPTS and all(
            (isinstance(p, str) and p) or ids(p) for p in prompt):
        return [(server.model.encode(p, raw=True), p) if isinstance(p, str) else (list(p), None)
                for p in prompt]
    raise RequestError(400, f"'prompt' must be non-empty text, a list of token ids, or a list "
                            f"of up to {MAX_PROMPTS} of either", param="prompt")


async def completions(server: Server, request: Request) -> Response:
    body = await read_json(request, server.max_body)

    def build():
        stream, include_usage, continuous = common(server, body, FIELDS, NO_OPS)
        top = number(body, "logprobs", int, low=0, high=5)
        echo = flag(body, "echo")
        scoring_only = echo and body.get("max_tokens") == 0
        if scoring_only and body.get("max_completion_tokens") is not None:
            raise RequestError(400, "give max_tokens or max_completion_tokens, not both",
                               param="max_tokens")
        sampled = sampling({k: v for k, v in body.items() if k != "max_tokens"}) \
            if scoring_only else sampling(body)
        prompts = prompt_list(server, body.get("prompt"))
        if stream and (echo or len(prompts) > 1):
            raise RequestError(400, "'echo' and several prompts are answered without "
                                    "streaming ('stream': false)", param="stream")
        reqs = [server.request(tokens, {**sampled, "max_tokens": 1} if scoring_only else
                               sampled, stop_list(body.get("stop")),
                               default_max_tokens=DEFAULT_MAX_TOKENS,
                               speculative=server.speculative(body))
                for tokens, _ in prompts]
        return reqs, prompts, stream, include_usage, continuous, top, echo, scoring_only

    reqs, prompts, stream, include_usage, continuous, top, echo, scoring_only = \
        await server.validate(build)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": server.model_id}

    def choice(text: str, finish, entries: list[dict], offset: int = 0, index: int = 0) -> dict:
        return {"text": text, "index": index, "finish_reason": finish,
                "logprobs": None if top is None else legacy(entries, offset)}

    if not stream:
        async def one(index: int) -> tuple[dict, object]:
            req, (tokens, text) = reqs[index], prompts[index]
            said, entries = "", []
            if echo:
                said = text if text is not None else server.model.decode(tokens)
                if top is not None:
                    entries = await server.score(req, top)
            if scoring_only:
                return choice(said, "length", entries, index=index), \
                    Stats(prompt_tokens=len(tokens), prefill_tokens=len(tokens))
            out = await server.complete(req, tools=False, logprobs=top, http=request)
            return (choice(said + out.text, out.stats.finish_reason, entries + out.logprobs,
                           index=index), out.stats)

        done = await asyncio.gather(*(one(i) for i in range(len(reqs))))
        if len(done) == 1:  # as before: with the cache and speculation records
            counts = usage(done[0][1])
        else:
            prompt = sum(d[1].prompt_tokens for d in done)
            made = sum(d[1].generated_tokens for d in done)
            counts = {"prompt_tokens": prompt, "completion_tokens": made,
                      "total_tokens": prompt + made}
        return JSONResponse({**head, "choices": [d[0] for d in done], "usage": counts})

    req = reqs[0]

    async def events():
        offset = 0
        try:
            async for item in server.reply(req, tools=False, logprobs=top):
                if isinstance(item, Delta):
                    yield sse({**head, "choices": [choice(item.text, None, item.logprobs,
                                                          offset)],
                               **({"usage": running_usage(len(req.tokens), item.generated)}
                                  if continuous else {})})
                    offset += len(item.text)
                    continue
                yield sse({**head, "choices": [choice(item.text, item.stats.finish_reason,
                                                      [], offset)],
                           **({"usage": None} if include_usage else {})})
                if include_usage:
                    yield sse({**head, "choices": [], "usage": usage(item.stats)})
        except Ended as e:
            yield stream_error(e)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=STREAM_HEADERS)
