"""The public model object: prompt rendering plus the engine, behind two methods.

    from qwen_mlx import load
    model = load()                       # default model, converted once and cached
    for piece in model.stream("Hi!"):    # text pieces; the last one carries the stats
        print(piece.text, end="")
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence, Union

from . import engine
from .engine import KVSpec, Piece, PromptCache, SamplingParams, Stats
from .engine.constraint import Constraint, Grammars
from .engine.request import Request, Speculative
from .engine.sampling import make_processors
from .engine.documents import longest_token_bytes, refuse_oversized
from .errors import ContextExceeded, QwenMlxError, TooManyTokens
from .models.loader import dtype_of
from .models.shapes import positions
from .tools.toolbox import DEFAULT_ROUNDS, DEFAULT_TIMEOUT

if TYPE_CHECKING:
    import numpy as np

Message = dict
Prompt = Union[str, Sequence[Message]]


@dataclass
class Completion:
    text: str
    tokens: list[int] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)


@dataclass
class ChatResult:
    """What :meth:`Model.chat` added to the conversation: ``messages`` (each reply, and the
    ``tool`` messages of its calls), the last reply's ``text``, how many ``rounds`` of calls
    ran, and each reply's ``stats`` (``prompt_tokens - cached_tokens`` is what a round
    prefilled)."""

    messages: list[dict]
    text: str
    rounds: int
    stats: list[Stats]


class Model:
    """A loaded Qwen3 model: mlx-lm network, tokenizer, and the model's sampling defaults."""

    def __init__(self, net, tokenizer, config: dict, path: Path, eos_ids: list[int],
                 adapter: Path | None = None, *, kv: KVSpec = KVSpec(),
                 context_limit: int | None = None,
                 prefill_step: int = engine.generate.PREFILL_STEP, plan=None,
                 defaults: SamplingParams = SamplingParams()) -> None:
        """Built by :func:`qwen_mlx.load` from a resolved ModelSpec: ``kv`` is already checked
        against the head size, ``defaults`` come from generation_config.json."""
        self.net = net
        self.kv = kv
        self.context_limit = context_limit  # set by the memory plan: what fits in memory
        self.prefill_step = prefill_step
        self.plan = plan  # the MemoryPlan it was loaded under, if any
        self.adapter = adapter
        self.tokenizer = tokenizer
        self.config = config
        self.path = Path(path)
        # tokenizer None: a model for token ids only (bench's random weights)
        tokenizer_eos = sorted(tokenizer.eos_token_ids) if tokenizer is not None else []
        self.eos_ids = list(dict.fromkeys(eos_ids + tokenizer_eos))
        self.defaults = defaults
        self._grammars: Grammars | None = None
        self._hybrid: bool | None = None
        self._longest_token: int | None = None
        self._same_vocab: dict[int, bool] = {}
        self._draft_nets: dict[int, object] = {}
        self._draft_caches: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self.kv_disk = None  # a KVDisk once keep_kv_on_disk is called

    @property
    def context_length(self) -> int:
        """Most tokens (prompt plus reply) one sequence may hold: the model's positions
        (with YaRN, if on), capped by what the memory plan found room for."""
        native = positions(self.config)
        return min(native, self.context_limit or native)

    @property
    def compute_dtype(self) -> str:
        return dtype_of(self.net)

    def new_cache(self) -> PromptCache:
        """A cache to pass to :meth:`stream` across calls, so shared prefixes are reused.
        It stores keys and values as the model's ``kv`` spec says (quantized or not)."""
        return PromptCache(self.net, self.kv)

    def keep_kv_on_disk(self, folder: str | Path, size: int | str | None = None) -> None:
        """Keep prompt caches in ``folder`` too, up to ``size`` bytes (every model's
        together; by default 32 GB, or a tenth of the volume's free room if less):
        :meth:`stream` then starts from the longest stored head of a prompt, and writes the
        cache it made for itself when the reply ends."""
        from .engine.kv_disk import KVDisk, model_key
        from .units import parse_size

        cap = None if size is None else \
            parse_size(size, "a KV disk size") if isinstance(size, str) else int(size)
        self.kv_disk = KVDisk(Path(folder), model_key(self), cap)

    def encode(self, prompt: Prompt, *, raw: bool = False, tools: list | None = None,
               enable_thinking: bool | None = None) -> list[int]:
        """Token ids for a prompt: raw text as it is, or messages through the chat template."""
        if raw:
            if not isinstance(prompt, str):
                raise QwenMlxError("a raw prompt must be text, not messages")
            return list(self.tokenizer.encode(prompt, add_special_tokens=False))
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else \
            list(prompt)
        if not self.tokenizer.has_chat_template:
            raise QwenMlxError(f"{self.path} has no chat template; use a raw prompt (--raw)")
        kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        from jinja2 import TemplateError, TemplateSyntaxError

        try:
            return list(self.tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=True, **kwargs))
        except TemplateError as e:
            verdict = "is broken" if isinstance(e, TemplateSyntaxError) else \
                "refused the conversation"
            raise QwenMlxError(f"the chat template in {self.template_file} {verdict}: "
                               f"{_template_problem(e)}") from None

    def as_generated(self, messages: list[dict], enable_thinking: bool | None) -> list[dict]:
        """The history of a tool loop rendered as the model generated it. With thinking
        off, a hybrid Qwen3's prompt ends in an empty ``<think>`` block, which its template
        drops from earlier replies; a reply after the latest user message keeps it (as an
        empty ``reasoning_content``), so the next round's prompt starts with the tokens the
        KV cache holds and prefills only what is new."""
        if enable_thinking is not False or not self.hybrid:
            return messages
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        last = users[-1] if users else -1
        return [{**m, "reasoning_content": "\n"} if i > last and m.get("role") == "assistant"
                and "reasoning_content" not in m and "</think>" not in (m.get("content") or "")
                else m for i, m in enumerate(messages)]

    @property
    def template_file(self) -> Path:
        """Where the chat template was read from (mlx-lm prefers chat_template.jinja)."""
        own = self.path / "chat_template.jinja"
        return own if own.is_file() else self.path / "tokenizer_config.json"

    def decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens))

    def request(self, prompt: Prompt | list[int], *, raw: bool = False,
                tools: list | None = None, enable_thinking: bool | None = None,
                stop: Sequence[str] = (), context: int | None = None,
                constraint: Constraint | None = None, strict_max_tokens: bool = False,
                draft: "Model | None" = None, lookup: int | None = None,
                draft_tokens: int | None = None, **sampling) -> Request:
        """Validate one generation into a :class:`Request`: the prompt rendered (text,
        messages, or token ids), ``sampling`` over the model's defaults (temperature, top_p,
        top_k, min_p, seed, max_tokens, the penalties) and the reply fitted into the context
        (``context`` caps it further: a chat's --max-context, an Ollama client's num_ctx),
        and a ``constraint`` the reply must match (its grammar compiled here: an
        unsupported schema keyword is named now). This is the one place the context budget
        is worked out; a bad value is a QwenMlxError here. A ``max_tokens`` above the
        context's room is cut to it, or with ``strict_max_tokens`` (the server, as OpenAI
        does) refused with the most allowed."""
        if self.embedding_only:
            raise QwenMlxError(self.embedding_only)
        params = self.defaults.override(**sampling)
        if any(not isinstance(s, str) or not s for s in stop):
            raise QwenMlxError("a stop string must be non-empty text")
        limit = min(context or self.context_length, self.context_length)
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            tokens = list(prompt)
        else:
            texts = [prompt] if isinstance(prompt, str) else \
                [m.get("content") for m in prompt if isinstance(m, dict)]
            refuse_oversized(self.tokenizer, [t for t in texts if isinstance(t, str)], limit,
                             self.longest_token)
            tokens = self.encode(prompt, raw=raw, tools=tools, enable_thinking=enable_thinking)
        if not tokens:
            raise QwenMlxError("the prompt is empty")
        if len(tokens) >= limit:
            raise ContextExceeded(f"the prompt is {len(tokens):,} tokens; the context is "
                                  f"{limit:,}")
        room = limit - len(tokens)
        if strict_max_tokens and sampling.get("max_tokens", 0) > room:
            raise TooManyTokens(sampling["max_tokens"], room, limit, len(tokens))
        params = params.override(max_tokens=min(params.max_tokens, room))
        think_first = False
        if constraint is not None:
            self.grammars.compile(constraint)
            think_first = self.thinks_first(tokens)
        speculative = self.speculative(draft, lookup, draft_tokens)
        return Request(tuple(tokens), params, tuple(stop), constraint, think_first, speculative)

    def speculative(self, draft: "Model | None", lookup: int | None,
                    draft_tokens: int | None) -> Speculative | None:
        """Speculative decoding's settings, checked: a ``draft`` model proposing
        ``draft_tokens`` (4) per step, or prompt ``lookup`` of that many."""
        return Speculative.checked(draft, lookup, draft_tokens,
                                   lambda: self._vocabulary_problem(draft))

    def _vocabulary_problem(self, draft: "Model") -> str | None:
        if self.same_vocabulary(draft):
            return None
        return f"the draft {draft.path} has a different tokenizer from {self.path}: " \
               f"speculative decoding needs the same vocabulary"

    def same_vocabulary(self, other: "Model") -> bool:
        """Whether ``other`` reads and writes the same token ids (checked once per draft)."""
        known = self._same_vocab.get(id(other))
        if known is None:
            mine, theirs = self.tokenizer, other.tokenizer
            known = mine.get_vocab() == theirs.get_vocab() and \
                set(self.eos_ids) == set(other.eos_ids)
            self._same_vocab[id(other)] = known
        return known

    def thinks_first(self, tokens: list[int]) -> bool:
        """Whether the reply to these prompt tokens opens with a ``<think>`` block: a hybrid
        Qwen3 on a prompt that ends with the bare assistant header (thinking off ends it
        with an empty think block instead). Qwen3-4B-Instruct-2507 never thinks."""
        header = self.tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
        return self.hybrid and tokens[-len(header):] == header

    @property
    def longest_token(self) -> int:
        """Bytes of this vocabulary's longest token (bounds a text's token count)."""
        if self._longest_token is None:
            self._longest_token = longest_token_bytes(self.tokenizer)
        return self._longest_token

    @property
    def embedding_only(self) -> str | None:
        """Why this model cannot generate or rerank (a Qwen3-Embedding: no output layer of
        its own), or None."""
        from .models.checkpoint import is_embedding

        if not is_embedding(self.config):
            return None
        return (f"{self.path.name} is an embedding model (Qwen3-Embedding): it only embeds "
                f"(qwen-mlx embed, /v1/embeddings, /api/embed)")

    @property
    def hybrid(self) -> bool:
        """A hybrid thinking model: its chat template's enable_thinking switch changes the
        prompt (the hybrid Qwen3-4B's does; Instruct-2507's template has none)."""
        if self._hybrid is None:
            probe = [{"role": "user", "content": "?"}]
            self._hybrid = bool(self.tokenizer.has_chat_template) and \
                self.encode(probe, enable_thinking=False) != self.encode(probe)
        return self._hybrid

    @property
    def grammars(self) -> Grammars:
        """The structured-output matchers for this model's tokenizer (made on first use)."""
        if self._grammars is None:
            ids = [self.tokenizer.convert_tokens_to_ids(t) for t in ("<think>", "</think>")]
            known = all(isinstance(i, int) and i != self.tokenizer.unk_token_id for i in ids)
            self._grammars = Grammars((self.path / "tokenizer.json").read_text(),
                                      self.eos_ids, tuple(ids) if known else None)
        return self._grammars

    def processors(self, request: Request) -> list:
        """The logits processors a request needs: its penalties, then its grammar mask."""
        out = make_processors(request.params)
        if request.constraint is not None:
            out.append(self.grammars.processor(request.constraint,
                                               think_first=request.think_first))
        return out

    def stream(self, prompt: Prompt | list[int] | Request, *,
               cache: PromptCache | None = None,
               on_prefill: engine.generate.PrefillProgress | None = None,
               prefill_step: int | None = None, cut=None, top_logprobs: int | None = None,
               **request) -> Iterator[Piece]:
        """Stream the reply to a :class:`Request`, or to a prompt with :meth:`request`'s
        keyword arguments. The last piece carries :class:`Stats`; ``cut()``, asked after each
        token, ends the reply early as "length". ``top_logprobs``: each piece's
        log-probability and that many alternatives (as the batch reports them)."""
        if isinstance(prompt, Request):
            if request:
                raise TypeError(f"a Request is already validated; drop {', '.join(request)}")
            req = prompt
        else:
            req = self.request(prompt, **request)
        own = cache is None
        cache = self.new_cache() if cache is None else cache
        if self.kv_disk is not None:
            self.kv_disk.fill(cache, req.tokens)
        pieces = engine.stream(self.net, self.tokenizer, list(req.tokens),
                             engine.make_sampler(req.params), max_tokens=req.params.max_tokens,
                             cache=cache, eos_ids=self.eos_ids, stop=req.stop,
                             on_prefill=on_prefill, processors=self.processors(req), cut=cut,
                             speculation=self.speculation(req.speculative, cache,
                                                          top_logprobs),
                             params=req.params, top_logprobs=top_logprobs,
                             **self.chunking(prefill_step))
        return self.kv_disk.saving(pieces, cache) if own and self.kv_disk else pieces

    def speculation(self, settings: Speculative | None, cache: PromptCache,
                    top_logprobs: int | None = None):
        """The proposer for one reply (None: plain decoding); a draft's cache is kept
        beside the model's cache it follows (a chat's turns reuse both). Its ``counts``
        say what it did."""
        if settings is None:
            return None
        from .engine.speculative import Speculation

        draft = settings.draft
        if draft is None:
            return Speculation(settings.tokens, logprobs=top_logprobs)
        caches = self._draft_caches.setdefault(cache, {})
        if id(draft) not in caches:
            caches[id(draft)] = draft.new_cache()
        return Speculation(settings.tokens, self._draft_net(draft), caches[id(draft)],
                           logprobs=top_logprobs)

    def _draft_net(self, draft: "Model"):
        """The draft's network with this model's output rows (one object per draft: the
        batch keeps a draft's rows by its identity)."""
        from .engine.speculative import RowsFitted

        own, rows = draft.config["vocab_size"], self.config["vocab_size"]
        if own == rows:
            return draft.net
        if id(draft) not in self._draft_nets:
            self._draft_nets[id(draft)] = RowsFitted(draft.net, own, rows)
        return self._draft_nets[id(draft)]

    def score(self, tokens: list[int], top: int = 0) -> list:
        """Each of ``tokens``' log-probability after the tokens before it (the first has
        none) and its ``top`` likeliest alternatives: a prompt's log-likelihood, as
        evaluation harnesses ask for it (:mod:`qwen_mlx.engine.score`)."""
        return [s for part in self.scoring(tokens, top) for s in part]

    def scoring(self, tokens: list[int], top: int = 0) -> Iterator[list]:
        """:meth:`score` a chunk at a time (a prefill step's worth of tokens each), for a
        server that runs other requests between the chunks."""
        from .engine.score import scoring
        from .models import mlx_lm_seam as seam

        return scoring(self.net, tokens, top=top, chunk=self.prefill_step,
                       stream=seam.decode_stream())

    def pooling(self, rows: list[list[int]], *, dimensions: int | None = None,
                rerank: bool = False) -> Iterator[list]:
        """Embeddings (or rerank scores) of token rows a batch at a time, as
        [(row index, result)] per batch (:mod:`qwen_mlx.engine.embed`); rows come from
        ``engine.embed.embedding_rows`` / ``rerank_rows``."""
        from .engine import embed
        from .models import mlx_lm_seam as seam

        pooling = embed.Pooling(dimensions, embed.judge_ids(self) if rerank else None)
        room = embed.by_tokens if self.plan is None else \
            (lambda longest: self.plan.pooling_rows(longest, rerank))
        return embed.pooled(self.net, rows, pooling, room=room, stream=seam.decode_stream())

    def embed(self, texts: Sequence[str], instruction: str | None = None,
              dimensions: int | None = None) -> "np.ndarray":
        """One L2-normalized float32 vector per text (Qwen3-Embedding's last-token pooling);
        ``instruction`` marks queries, ``dimensions`` keeps the first N values."""
        import numpy as np

        from .engine import embed

        rows = embed.embedding_rows(self, list(texts), instruction=instruction)
        return np.array(embed.gathered(self.pooling(rows, dimensions=dimensions), len(rows)),
                        dtype=np.float32)

    def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None,
               instruction: str | None = None) -> list[tuple[int, float]]:
        """(document index, relevance in 0..1), most relevant first (Qwen3-Reranker's
        yes/no judgement); the first ``top_n`` only, when given."""
        from .engine import embed

        if self.embedding_only:
            raise QwenMlxError(self.embedding_only)
        rows = embed.rerank_rows(self, query, list(documents), instruction=instruction)
        scores = embed.gathered(self.pooling(rows, rerank=True), len(rows))
        ranked = sorted(enumerate(scores), key=lambda pair: -pair[1])
        return ranked[:top_n] if top_n is not None else ranked

    def token_steps(self, tokens: list[int], cache: PromptCache, *, max_tokens: int,
                    params: SamplingParams | None = None,
                    speculation=None) -> Iterator[int]:
        """The loop under :meth:`stream` without text: new token ids after ``tokens`` (which
        ``cache`` lacks), with this model's KV spec and prefill chunking; greedy unless
        ``params``; checked several at a time with a :meth:`speculation`. `qwen-mlx bench`
        measures this, so it measures what users run."""
        params = params or SamplingParams(temperature=0.0)
        if speculation is None:
            return engine.generate_tokens(self.net, tokens, cache.layers,
                                          engine.make_sampler(params), max_tokens=max_tokens,
                                          **self.chunking(None))
        from .engine.generate import prefill
        from .engine.speculative import speculative_tokens

        chunking = self.chunking(None)
        return speculative_tokens(
            self.net, tokens, cache.layers, params, speculation, max_tokens=max_tokens,
            prefill=lambda stream: prefill(self.net, tokens, cache.layers, stream, **chunking),
            processors=make_processors(params))

    def chunking(self, prefill_step: int | None = None) -> dict:
        """Prefill chunk size, shrunk at depth as the memory plan says (the keyword
        arguments of :func:`~qwen_mlx.engine.generate.prefill`)."""
        step = prefill_step or self.prefill_step
        return {"prefill_step": step,
                "chunk_at": partial(self.plan.chunk_at, cap=step) if self.plan else None}

    def generate(self, prompt: Prompt | list[int], **kwargs) -> Completion:
        """Like :meth:`stream`, but wait for the whole reply."""
        out = Completion("")
        parts = []
        for piece in self.stream(prompt, **kwargs):
            parts.append(piece.text)
            out.tokens += piece.tokens
            if piece.stats is not None:
                out.stats = piece.stats
        out.text = "".join(parts)
        return out


    def chat(self, messages: Prompt, *, tools: Iterable = (), on_call=None,
             max_rounds: int = DEFAULT_ROUNDS, tool_timeout: float = DEFAULT_TIMEOUT,
             tool_choice: str = "auto", cache: PromptCache | None = None,
             enable_thinking: bool | None = None, **sampling) -> ChatResult:
        """Reply to ``messages``, running the tools the reply calls and replying again to
        their results, until a reply calls nothing or ``max_rounds`` rounds have run.

        ``tools``: :class:`~qwen_mlx.tools.McpServers` (servers from an ``mcpServers``
        file), :class:`~qwen_mlx.tools.FunctionTool`, or plain functions (their JSON schema
        from their annotations). ``on_call(call)`` approves each call (True or "yes", False
        or "no", "always"); without it every call runs. ``tool_choice``: "auto", "required"
        (the first reply must call a tool) or a tool's name (it must call that one). One KV
        cache is kept across rounds (pass ``cache`` to keep it across chats too), so a
        round prefills only its tool results. Tools that are yours to stop (MCP servers)
        stay yours: close them when done."""
        from .tools import Toolbox
        from .tools.calls import forced_call
        from .tools.loop import Approvals, run_round

        toolbox = tools if isinstance(tools, Toolbox) else Toolbox(tools, timeout=tool_timeout)
        specs = toolbox.specs()
        ask = None if on_call is None else (lambda call: _answer(on_call(call)))
        approvals = Approvals(ask=ask)
        history = [{"role": "user", "content": messages}] if isinstance(messages, str) \
            else list(messages)
        start = len(history)
        cache = cache if cache is not None else self.new_cache()  # an empty one is falsy
        forced = None if tool_choice == "auto" else \
            forced_call(specs or [], None if tool_choice == "required" else tool_choice)
        out_stats, rounds = [], 0
        while True:
            reply = self.generate(self.as_generated(history, enable_thinking), tools=specs,
                                  cache=cache, constraint=forced,
                                  enable_thinking=enable_thinking, **sampling)
            forced = None  # only the first reply is made to call
            history.append({"role": "assistant", "content": reply.text})
            out_stats.append(reply.stats)
            if rounds == max_rounds:
                break
            outcome = run_round(reply.text, toolbox, approvals)
            if outcome is None:
                break
            history += outcome.messages
            rounds += 1
            if outcome.cancelled:
                break
        text = history[-1]["content"] if history[-1]["role"] == "assistant" else ""
        return ChatResult(history[start:], text.rpartition("</think>")[2].strip(), rounds,
                          out_stats)


def _answer(value) -> str:
    """An ``on_call`` answer: True/False, or "yes", "no", "always"."""
    if value is True or value is False:
        return "yes" if value else "no"
    if value in ("yes", "no", "always"):
        return value
    raise QwenMlxError(f"on_call must return True, False, 'yes', 'no' or 'always', not "
                       f"{value!r}")


def _template_problem(e: Exception) -> str:
    """A jinja error in one line: its message, and the line number for a syntax error."""
    line = getattr(e, "lineno", None)
    message = str(getattr(e, "message", None) or e).splitlines()[0]
    return f"{message} (line {line})" if line else message
