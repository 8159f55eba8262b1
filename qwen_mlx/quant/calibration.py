"""The text a recipe fits on (qwen_mlx/evaluate/text/fit/, package data, so an installed copy
has it), kept apart from the held-out text it is scored on (heldout/,
:func:`qwen_mlx.evaluate.quality.built_in_text`).

The fit set is the project's own prose, code and math plus multi-turn chats with tool calls
rendered through the model's own chat template, so the recipe sees the special tokens and
the layout the model will meet in use. It can be extended with continuations sampled from
the source model itself (:func:`teacher_text`): text in the teacher's own distribution,
without downloading a corpus.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import QwenMlxError

FIT = Path(__file__).resolve().parents[1] / "evaluate" / "text" / "fit"
TEACHER_TEMPERATURE = 0.7


def conversations() -> list[dict]:
    """The fit set's chats: {"messages": [...], "tools": [...]?} per line of chat.jsonl."""
    path = FIT / "chat.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()] if path.is_file() else []


def fit_text(tokenizer) -> str:
    """The fit set as one text: the .txt files in name order, then every chat rendered by
    ``tokenizer``'s chat template (the one the converted model will use)."""
    files = sorted(FIT.glob("*.txt")) if FIT.is_dir() else []
    if not files:
        raise QwenMlxError(f"the built-in calibration set is missing ({FIT})")
    parts = [f.read_text(encoding="utf-8") for f in files]
    if getattr(tokenizer, "has_chat_template", False):
        parts += [tokenizer.apply_chat_template(c["messages"], tools=c.get("tools"),
                                                tokenize=False) for c in conversations()]
    return "\n\n".join(parts)


def teacher_text(source: Path, tokens: int, *, seed: int = 0) -> str:
    """About ``tokens`` tokens sampled from the model in ``source`` (temperature 0.7,
    ``seed``): its replies to the fit set's first user turns, each kept with its prompt as
    the chat template renders them. Deterministic for a seed."""
    from ..models.loader import load_tokenizer, load_weights
    from ..model import Model

    net, config = load_weights(Path(source))
    model = Model(net, load_tokenizer(Path(source), []), config, Path(source), [])
    openings = [c["messages"][:next(i for i, m in enumerate(c["messages"])
                                    if m["role"] == "user") + 1] for c in conversations()]
    if not openings:
        raise QwenMlxError(f"the built-in calibration set has no chats ({FIT / 'chat.jsonl'})")
    texts, made, n = [], 0, 0
    while made < tokens:
        messages = openings[n % len(openings)]
        prompt = model.encode(messages)
        reply = model.generate(prompt, max_tokens=min(256, tokens - made),
                               temperature=TEACHER_TEMPERATURE, seed=seed + n)
        texts.append(model.decode(prompt + reply.tokens))
        made += len(reply.tokens) or 1
        n += 1
    return "\n\n".join(texts)


def fit_chunks(folder: Path, chunk: int, *, limit: int | None = None, teacher_tokens: int = 0,
               source: Path | None = None) -> list[list[int]]:
    """The fit set as whole chunks of ``chunk`` tokens (at most ``limit`` tokens) for the
    model in ``folder``, with ``teacher_tokens`` sampled from ``source`` put first (so a
    limit keeps them)."""
    from ..models.loader import load_tokenizer
    from ..evaluate.quality import chunks

    tokenizer = load_tokenizer(Path(folder), [])
    text = fit_text(tokenizer)
    if teacher_tokens:
        text = teacher_text(source or folder, teacher_tokens) + "\n\n" + text
    return chunks(list(tokenizer.encode(text, add_special_tokens=False)), chunk, limit)
