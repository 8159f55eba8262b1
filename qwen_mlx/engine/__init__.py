"""The one generation engine: sampling, prompt caching, prefill and decode."""

from .generate import Piece, Stats, generate_tokens, stream
from .prompt_cache import PromptCache
from .sampling import SamplingParams, make_sampler

__all__ = ["Piece", "PromptCache", "SamplingParams", "Stats", "generate_tokens", "make_sampler",
           "stream"]
