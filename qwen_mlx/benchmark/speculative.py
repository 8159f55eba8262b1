"""`qwen-mlx bench --draft/--lookup`: speculative decoding against plain decoding.

Both decode the same prompt greedily through ``Model.token_steps`` (the loop under chat,
generate and serve), alternated ``reps`` times after a warm-up; each figure is the median of
its runs, and the speed-up is the median speculative rate over the median plain rate. Every
speculative run's tokens are compared with the plain run's (``identical``): lossless
decoding must give the same ids.

The prompt copies: a code edit whose answer repeats its input, where prompt lookup helps
(the model's tokenizer encodes it); a model without a tokenizer (random weights from a
``shape:``) gets a block of random ids repeated four times. Random weights tend to repeat
themselves, which lookup also finds: their acceptance says how the machinery performs, not
how a trained model's text would.
"""

from __future__ import annotations

import statistics
import time

from ..engine.request import Speculative
from ..model import Model
from .runs import random_prompt

CODE_EDIT = ("Rename `total` to `subtotal` in this function and return it unchanged "
             "otherwise:\ndef price(items):\n    total = 0\n    for item in items:\n"
             "        total += item.price * item.quantity\n    return total\n") * 2


def copy_prompt(model: Model) -> list[int]:
    """Token ids of a prompt whose continuation copies it (see the module's text)."""
    if model.tokenizer is not None:
        return model.encode(CODE_EDIT)
    return random_prompt(64, seed=7) * 4


def _decode(model: Model, prompt: list[int], gen_tokens: int,
            settings: Speculative | None) -> tuple[list[int], float, object]:
    """(new ids, decode tok/s from the first new token on, the proposer's counts)."""
    cache = model.new_cache()
    speculation = model.speculation(settings, cache)
    steps = model.token_steps(prompt, cache, max_tokens=gen_tokens + 1,
                              speculation=speculation)
    out, first, last = [], 0.0, 0.0
    for token in steps:
        last = time.perf_counter()
        if not out:
            first = last
        out.append(token)
    rate = (len(out) - 1) / (last - first) if last > first else 0.0
    return out, rate, speculation.counts if speculation else None


def measure_speculative(model: Model, settings: Speculative, *, gen_tokens: int, reps: int,
                        warmup: int) -> dict:
    """One method's figures on ``model`` as a JSON-ready dict (the runs included)."""
    prompt = copy_prompt(model)
    for _ in range(warmup):
        _decode(model, prompt, min(gen_tokens, 16), None)
        _decode(model, prompt, min(gen_tokens, 16), settings)
    runs = []
    for _ in range(reps):  # alternated: plain, speculative, plain, ...
        plain, plain_rate, _ = _decode(model, prompt, gen_tokens, None)
        fast, rate, counts = _decode(model, prompt, gen_tokens, settings)
        runs.append({"plain_decode_tps": plain_rate, "decode_tps": rate,
                     "acceptance_rate": counts.accepted / counts.proposed
                     if counts.proposed else 0.0,
                     "tokens_per_forward": len(fast) / counts.forwards,
                     "identical": fast == plain})
    median = {key: round(statistics.median(r[key] for r in runs), 4)
              for key in ("plain_decode_tps", "decode_tps", "acceptance_rate",
                          "tokens_per_forward")}
    return {"method": "lookup" if settings.draft is None else "draft",
            "draft": None if settings.draft is None else str(settings.draft.path),
            "tokens": settings.tokens, "prompt_tokens": len(prompt),
            "generated": gen_tokens + 1, **median,
            "speedup": round(median["decode_tps"] / median["plain_decode_tps"], 3)
            if median["plain_decode_tps"] else None,
            "identical": all(r["identical"] for r in runs), "runs": runs}
