"""Training data: JSONL in the three formats mlx-lm users already have, validated line by line.

Every line is checked before any training starts, so a typo on line 9,000 costs seconds,
not an hour of training. Errors name the file and line and say what is wrong; a file that
mixes formats is refused, because the formats are trained differently (chat turns are
masked, plain text is not).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QwenMlxError

FORMATS = ("messages", "prompt/completion", "text")
ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Example:
    """One validated line: ``record`` is the parsed JSON; ``where`` is "file:line"."""

    record: dict
    where: str


@dataclass
class Dataset:
    format: str
    train: list[Example]
    valid: list[Example]
    files: list[Path] = field(default_factory=list)
    split_from_train: bool = False


def _format_of(record: dict) -> str | None:
    if "messages" in record:
        return "messages"
    if "prompt" in record or "completion" in record:
        return "prompt/completion"
    if "text" in record:
        return "text"
    return None


def _check_message(m, i: int) -> str | None:
    """What is wrong with message ``i`` (1-based), or None."""
    if not isinstance(m, dict):
        return f"message {i} is not an object"
    role = m.get("role")
    if role not in ROLES:
        return f"message {i} has role {role!r} (expected one of {', '.join(ROLES)})"
    content = m.get("content")
    calls = m.get("tool_calls")
    if role == "assistant" and calls is not None:
        if not isinstance(calls, list) or not all(
                isinstance(c, dict) and isinstance((c.get("function") or c).get("name"), str)
                for c in calls):
            return f"message {i} has tool_calls that are not a list of {{name, arguments}}"
        if content is not None and not isinstance(content, str):
            return f"message {i} has a non-string content"
        return None
    if "content" not in m:
        return f"message {i} ({role}) has no 'content'"
    if not isinstance(content, str):
        return f"message {i} ({role}) has a non-string content"
    return None


def _check(record, fmt: str | None) -> str | None:
    """What is wrong with one parsed line, or None."""
    if not isinstance(record, dict):
        return "is not a JSON object"
    if fmt is None:
        return "has none of the keys 'messages', 'prompt'/'completion' or 'text'"
    if fmt == "messages":
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty list"
        for i, m in enumerate(messages, 1):
            if (problem := _check_message(m, i)) is not None:
                return problem
        if not any(m["role"] == "assistant" for m in messages):
            return "has no assistant message to learn from"
        tools = record.get("tools")
        if tools is not None and not (isinstance(tools, list)
                                      and all(isinstance(t, dict) for t in tools)):
            return "'tools' must be a list of objects"
    elif fmt == "prompt/completion":
        for key in ("prompt", "completion"):
            if key not in record:
                return f"has no '{key}'"
            if not isinstance(record[key], str):
                return f"'{key}' is not a string"
        if not record["completion"]:
            return "'completion' is empty"
    elif not isinstance(record["text"], str) or not record["text"]:
        return "'text' must be a non-empty string"
    return None


def read_jsonl(path: Path, fmt: str | None = None) -> tuple[str, list[Example]]:
    """Parse and validate every line of ``path``; return (format, examples).

    ``fmt`` is the format already seen (in the train file, when reading the valid file).
    The first bad line raises, with the count of other bad lines.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise QwenMlxError(f"{path} is not UTF-8 text") from None
    except OSError as e:
        raise QwenMlxError(f"cannot read {path}: {e.strerror}") from None
    examples: list[Example] = []
    errors: list[str] = []
    first_at = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except RecursionError:
            errors.append(f"{where}: nested too deeply")
            continue
        except ValueError as e:
            # json says "Unterminated string starting at": no second "at"
            errors.append(f"{where}: not valid JSON ({e.msg.removesuffix(' at')} at column "
                          f"{e.colno})")
            continue
        this = _format_of(record) if isinstance(record, dict) else None
        if this is not None and fmt is not None and this != fmt:
            errors.append(f"{where}: a {this} example, but {first_at or 'the train file'} is "
                          f"{fmt}; mixed formats are not supported")
            continue
        if (problem := _check(record, this)) is not None:
            errors.append(f"{where}: {problem}")
            continue
        if fmt is None:
            fmt, first_at = this, where
        examples.append(Example(record, where))
    if errors:
        more = f" (and {len(errors) - 1} more bad lines)" if len(errors) > 1 else ""
        raise QwenMlxError(errors[0] + more)
    if not examples:
        raise QwenMlxError(f"{path} has no examples")
    return fmt, examples


def load_data(path: str | Path, *, valid_split: float = 0.1, seed: int = 0) -> Dataset:
    """A JSONL file, or a folder with train.jsonl (and valid.jsonl).

    Without a valid file, ``valid_split`` of the training examples (at least one, chosen with
    ``seed``) are held out for validation; 0 trains on everything and skips validation.
    """
    path = Path(path)
    if path.is_dir():
        train_file, valid_file = path / "train.jsonl", path / "valid.jsonl"
        if not train_file.is_file():
            raise QwenMlxError(f"{path} has no train.jsonl")
    elif path.is_file():
        train_file, valid_file = path, None
    else:
        raise QwenMlxError(f"no such data file or folder: {path}")
    fmt, train = read_jsonl(train_file)
    files = [train_file]
    if valid_file is not None and valid_file.is_file():
        _, valid = read_jsonl(valid_file, fmt)
        return Dataset(fmt, train, valid, files + [valid_file])
    if not 0 <= valid_split < 1:
        raise QwenMlxError("--valid-split must be at least 0 and below 1")
    if valid_split == 0 or len(train) < 2:
        return Dataset(fmt, train, [], files)
    held = max(1, round(len(train) * valid_split))
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:held])
    return Dataset(fmt, [e for i, e in enumerate(train) if i not in chosen],
                   [e for i, e in enumerate(train) if i in chosen], files, split_from_train=True)
