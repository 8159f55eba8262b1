"""The one generation engine: sampling, prompt caching, prefill and decode."""

from .constraint import Constraint
from .generate import Piece, Stats, generate_tokens, stream
from .kv_cache import KVSpec
from .prompt_cache import PromptCache
from .request import Request
from .sampling import SamplingParams, make_sampler

__all__ = ["Constraint", "KVSpec", "Piece", "PromptCache", "Request", "SamplingParams", "Stats",
           "generate_tokens", "make_sampler", "stream"]
