"""The one generation engine: sampling, prompt and KV caches, prefill and decode, batches,
constraints, and the memory plan it runs under. Imports models, system and evaluate, never a
verb (chat, serve, finetune, cli)."""

from .constraint import Constraint
from .generate import Piece, Stats, generate_tokens, stream
from .kv_cache import KVSpec
from .prompt_cache import PromptCache
from .request import Request
from .sampling import SamplingParams, make_sampler

__all__ = ["Constraint", "KVSpec", "Piece", "PromptCache", "Request", "SamplingParams", "Stats",
           "generate_tokens", "make_sampler", "stream"]
