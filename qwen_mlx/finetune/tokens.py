"""Examples -> token ids and a loss mask.

A chat example is rendered whole with the model's own chat template, then the mask is
read off the tokens: every ``<|im_start|>assistant\\n ... <|im_end|>`` span is trained,
its header is not. Scanning the rendered tokens (instead of rendering prefixes and diffing)
keeps the mask exact when the template rewrites earlier turns (Qwen3 drops the <think>
block of old assistant turns), and trains **every** assistant turn, where mlx-lm's
``--mask-prompt`` trains only the last one. The ``<|im_end|>`` that closes a turn is
trained so the model learns to stop; the newline after it belongs to the template.

Qwen's templates (Instruct-2507's and the hybrid models') open the last assistant turn with
an empty ``<think>\n\n</think>\n\n``. That block is template, not reply: the instruct
model never writes it, and the hybrid model gets it as part of the prompt when thinking is
off. It stays in the input but is not trained, so a tuned model does not learn to print it.
A non-empty reasoning block is the reply's and is trained.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import QwenMlxError
from .data import Example

ASSISTANT_HEADER = "<|im_start|>assistant\n"
TURN_END = "<|im_end|>"
EMPTY_THINK = "<think>\n\n</think>\n\n"


@dataclass
class Encoded:
    """``ids`` and, per id, whether it is a training target (``mask[0]`` never is: nothing
    predicts the first token)."""

    ids: list[int]
    mask: list[bool]
    where: str

    @property
    def targets(self) -> int:
        return sum(self.mask[1:])


class Encoder:
    def __init__(self, tokenizer, *, train_on_all: bool = False) -> None:
        self.tokenizer = tokenizer
        self.train_on_all = train_on_all
        self.header = tokenizer.encode(ASSISTANT_HEADER, add_special_tokens=False)
        self.end = tokenizer.convert_tokens_to_ids(TURN_END)
        self.empty_think = tokenizer.encode(EMPTY_THINK, add_special_tokens=False)

    def messages_of(self, fmt: str, record: dict) -> list[dict]:
        if fmt == "prompt/completion":
            return [{"role": "user", "content": record["prompt"]},
                    {"role": "assistant", "content": record["completion"]}]
        return record["messages"]

    def render(self, fmt: str, record: dict) -> str:
        """The text the model trains on."""
        if fmt == "text":
            return record["text"]
        return self.tokenizer.apply_chat_template(
            self.messages_of(fmt, record), tools=record.get("tools"), tokenize=False)

    def assistant_mask(self, ids: list[int]) -> list[bool]:
        """True on the tokens of every assistant turn (content through <|im_end|>)."""
        mask = [False] * len(ids)
        n, i = len(self.header), 0
        while i < len(ids):
            if ids[i:i + n] == self.header:
                j = i + n
                if ids[j:j + len(self.empty_think)] == self.empty_think:
                    j += len(self.empty_think)
                while j < len(ids) and ids[j] != self.end:
                    mask[j] = True
                    j += 1
                if j < len(ids):
                    mask[j] = True  # the turn's <|im_end|>
                i = j + 1
            else:
                i += 1
        return mask

    def encode(self, fmt: str, example: Example) -> Encoded:
        try:
            text = self.render(fmt, example.record)
        except Exception as e:  # a template error is the data's problem: say which line
            raise QwenMlxError(f"{example.where}: the chat template cannot render this "
                               f"example ({str(e).splitlines()[0]})") from None
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if fmt == "text":
            eos = self.tokenizer.eos_token_id
            if eos is not None and (not ids or ids[-1] != eos):
                ids.append(eos)
            mask = [True] * len(ids)
        elif self.train_on_all:
            mask = [True] * len(ids)
        else:
            mask = self.assistant_mask(ids)
        if mask:
            mask[0] = False
        return Encoded(ids, mask, example.where)
