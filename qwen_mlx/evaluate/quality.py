"""What a conversion cost: perplexity, and the next-token distributions against a reference.

The text is cut into chunks of ``chunk`` tokens, each scored from an empty cache.

Against a reference, :func:`joint_pass` computes the exact figures: KL(reference ||
candidate) per position over the whole vocabulary, top-1 agreement, both perplexities.
Memory stays bounded because no model is ever resident whole: reference and candidates are
read lazily from their safetensors and advance together, one decoder layer at a time, over
the same chunks (their hidden states, a few MB, are all that carries from layer to layer;
each layer's weights are freed once it ran). The vocabulary-sized tensors, the largest, are
never read whole either: the embedding only at the text's tokens, the output layers one
vocabulary slice at a time with running sums (vocab_rows.py). An earlier version kept the
reference's top 64 tokens and merged the rest into one bucket: a lower bound, 20x below the
exact KL on a checkpoint whose reference spreads its mass.

The fitted recipes' training targets (the reference's top-k, kept on disk between steps)
are quant/targets.py's.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import mlx.core as mx
import numpy as np

from ..errors import QwenMlxError
from .vocab_rows import SLICE, VocabTensors, score

ROWS = 64
DEFAULT_CHUNK = 512
BUILT_IN = Path(__file__).resolve().parent / "text" / "heldout"  # package data

Progress = Callable[[int, int], None]  # (tokens done, tokens total)


@dataclass
class Quality:
    """Figures of one evaluation; the reference's are None without a reference."""

    tokens: int  # positions scored
    perplexity: float
    reference_perplexity: float | None = None
    kl_mean: float | None = None  # exact: over the whole vocabulary
    kl_p99: float | None = None
    top1_agreement: float | None = None

    @property
    def perplexity_ratio(self) -> float | None:
        return None if self.reference_perplexity is None else \
            self.perplexity / self.reference_perplexity

    def line(self) -> str:
        """One line for people."""
        if self.kl_mean is None:
            return f"perplexity {self.perplexity:.4g} over {self.tokens:,} tokens"
        return (f"KL {self.kl_mean:.4f} (p99 {self.kl_p99:.4f}), top-1 "
                f"{self.top1_agreement:.1%}, perplexity x{self.perplexity_ratio:.3f} "
                f"({self.perplexity:.4g} vs {self.reference_perplexity:.4g}) over "
                f"{self.tokens:,} tokens")

    def to_dict(self) -> dict:
        return {**asdict(self), "perplexity_ratio": self.perplexity_ratio}


def built_in_text() -> str:
    """The held-out part of the project's own evaluation set (qwen_mlx/evaluate/text/)."""
    files = sorted(BUILT_IN.glob("*.txt")) if BUILT_IN.is_dir() else []
    if not files:
        raise QwenMlxError(f"the built-in evaluation set is missing ({BUILT_IN}); pass "
                           f"--file TEXT")
    return "\n\n".join(f.read_text(encoding="utf-8") for f in files)


def chunks(tokens: list[int], size: int, limit: int | None = None) -> list[list[int]]:
    """Whole chunks of ``size`` tokens (at most ``limit`` tokens in all); text shorter than
    one chunk is refused."""
    if len(tokens) < size:
        raise QwenMlxError(f"the text is {len(tokens):,} tokens; at least {size:,} are needed "
                           f"(one chunk; --chunk sets its size)")
    usable = len(tokens) if limit is None else min(len(tokens), max(limit, size))
    return [tokens[i:i + size] for i in range(0, usable - size + 1, size)]


def scored_rows(net, parts: list[list[int]], progress: Progress | None
            ) -> Iterator[tuple[int, int, mx.array, mx.array]]:
    """(chunk index, first position, float32 log-probabilities of the next token, those of
    the actual next tokens) for ROWS positions at a time, positions 0 .. len(chunk) - 2 of
    every chunk; ``progress`` hears the positions done."""
    head = output_head(net)
    total, done = sum(len(p) - 1 for p in parts), 0
    for n, chunk in enumerate(parts):
        hidden = net.model(mx.array(chunk)[None])
        nxt = mx.array(chunk[1:])
        for start in range(0, len(chunk) - 1, ROWS):
            logits = head(hidden[:, start:min(start + ROWS, len(chunk) - 1)])[0]
            logits = logits.astype(mx.float32)
            lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            rows = lp.shape[0]
            yield n, start, lp, mx.take_along_axis(lp, nxt[start:start + rows, None],
                                                   axis=-1)[:, 0]
            done += rows
            if progress:
                progress(done, total)


def output_head(net):
    """The output projection: the embedding's transpose when tied (Qwen3-4B), else lm_head."""
    return net.model.embed_tokens.as_linear if net.args.tie_word_embeddings else net.lm_head


def candidate_pass(net, parts: list[list[int]], progress: Progress | None = None) -> Quality:
    """Perplexity of ``net`` on the chunks (no reference to compare with)."""
    nll = [-np.array(tgt, dtype=np.float64) for _, _, _, tgt in scored_rows(net, parts, progress)]
    nll_all = np.concatenate(nll)
    return Quality(tokens=int(nll_all.size), perplexity=math.exp(nll_all.mean()))


def joint_pass(reference: Path, candidates: list[Path], parts: list[list[int]], *,
               dtype: str = "auto", progress: Progress | None = None) -> list[Quality]:
    """Each candidate MLX folder against the ``reference`` folder (MLX or Hugging Face) on
    the chunks: exact KL over the whole vocabulary, top-1 agreement, perplexities. The
    models advance together one decoder layer at a time, read lazily, each layer freed once
    it ran (see the module's docstring); ``progress`` hears layers done of all steps."""
    import gc

    from mlx_lm.models.base import create_attention_mask

    folders = [Path(reference)] + [Path(c) for c in candidates]
    nets = _lazy_nets(folders, dtype)
    depth = len(nets[0].model.layers)
    if any(len(n.model.layers) != depth for n in nets):
        raise QwenMlxError("the reference and the model have different numbers of layers")
    states = [VocabTensors.of(f, net, head=False).embed(parts) for f, net in zip(folders, nets)]
    mask = create_attention_mask(states[0][0], None)
    slices = -(-nets[0].args.vocab_size // SLICE)
    steps = depth + slices
    for layer in range(depth):
        for k, net in enumerate(nets):
            block = net.model.layers[layer]
            states[k] = [block(x, mask) for x in states[k]]
            mx.eval(states[k])
            net.model.layers[layer] = None  # its weights go; the hidden states carry on
        gc.collect()
        mx.clear_cache()
        if progress:
            progress(layer + 1, steps)
    finals = [mx.concatenate([net.model.norm(x[0, :-1]) for x in states[k]])
              for k, net in enumerate(nets)]
    mx.eval(finals)
    del states
    targets = mx.array([t for chunk in parts for t in chunk[1:]])
    scores = score(finals, targets, [VocabTensors.of(f, net, head=True)
                                     for f, net in zip(folders, nets)],
                   progress=(lambda done, _: progress(depth + done, steps)) if progress
                   else None)
    del nets, finals
    gc.collect()
    mx.clear_cache()
    ref_ppl = math.exp(-scores.reference_target.mean())
    return [Quality(tokens=int(kl.size), perplexity=math.exp(-target.mean()),
                    reference_perplexity=ref_ppl, kl_mean=float(kl.mean()),
                    kl_p99=float(np.percentile(kl, 99)), top1_agreement=float(same.mean()))
            for kl, same, target in zip(scores.kl, scores.same_top1, scores.target)]


def _lazy_nets(folders: list[Path], dtype: str) -> list:
    """The models in ``folders``, nothing read yet; the first (the reference) in ``dtype``."""
    from ..models.loader import load_weights

    return [load_weights(folders[0], dtype=dtype, lazy=True)[0]] + \
        [load_weights(f, lazy=True)[0] for f in folders[1:]]


def same_tokenizer(a: Path, b: Path) -> None:
    """A reference must read text as the candidate does: the same tokenizer.json."""
    def digest(folder: Path) -> str | None:
        f = Path(folder) / "tokenizer.json"
        return hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else None

    if digest(a) != digest(b):
        raise QwenMlxError(f"the reference {b} has another tokenizer than {a}: their "
                           f"next-token distributions cannot be compared")


def prepare(candidate: Path, reference: Path | None, text: str, *,
            chunk: int = DEFAULT_CHUNK, limit: int | None = None) -> list[list[int]]:
    """The chunks to score, after the checks that need no model: the reference reads text
    as the candidate does, and the text holds at least one chunk."""
    from ..models.loader import load_tokenizer

    if reference is not None:
        same_tokenizer(candidate, reference)
    tokenizer = load_tokenizer(Path(candidate), [])
    return chunks(list(tokenizer.encode(text, add_special_tokens=False)), chunk, limit)


def evaluate(candidate: Path | list[Path], reference: Path | None, parts: list[list[int]], *,
             progress: Callable[[str], Progress] | None = None) -> Quality | list[Quality]:
    """Score the MLX folder ``candidate`` (or each of a list, in one pass with the reference)
    on the chunks, against the ``reference`` folder (MLX or Hugging Face) when given:
    :func:`joint_pass`, layer by layer. ``progress(label)`` gives a callback per pass."""
    from ..models.loader import load_weights

    folders = candidate if isinstance(candidate, list) else [candidate]
    if reference is not None:
        results = joint_pass(reference, folders, parts,
                             progress=progress("layers") if progress else None)
    else:
        results = []
        for folder in folders:
            net, _ = load_weights(Path(folder))
            results.append(candidate_pass(net, parts, progress("model") if progress else None))
            del net
    return results if isinstance(candidate, list) else results[0]


def record(folder: Path, quality: Quality, reference: Path, chunk: int,
           before: Quality | None = None) -> None:
    """Write ``quality.json`` beside the weights and the figures into the model card, each
    file replaced whole (a stopped run leaves the old one); ``before``: the plain
    quantization a distilled recipe started from."""
    import json

    from ..models import card
    from ..models.provenance import QUALITY
    from ..storage.atomic import atomic_path

    folder = Path(folder)
    data = {"reference": str(reference), "chunk": chunk, "text": "built-in held-out set",
            **quality.to_dict()}
    if before is not None:
        data["before_distillation"] = before.to_dict()
    with atomic_path(folder / QUALITY) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    card.set_section(folder, "Quality", f"Against `{reference}` on qwen-mlx's held-out text "
                     f"({quality.tokens:,} tokens, `qwen-mlx eval`): {quality.line()}"
                     + ("" if before is None else f"; before distillation: KL "
                        f"{before.kl_mean:.4f}, top-1 {before.top1_agreement:.1%}") + ".")


class TooSlow(Exception):
    """The measurement would take longer than allowed: ``seconds`` is the estimate."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"about {seconds:,.0f} s")
        self.seconds = seconds


def estimate_seconds(reference: Path, candidates: list[Path], parts: list[list[int]], *,
                     dtype: str = "auto") -> float:
    """How long :func:`joint_pass` would take here, from a probe: the first decoder layer
    of every model on the first chunk, and one vocabulary slice of every output layer on
    that chunk's positions, timed and scaled to all layers, chunks, positions and slices.
    The probe reads one layer and one slice of each model, a small share of the pass."""
    import time

    from mlx_lm.models.base import create_attention_mask

    folders = [Path(reference)] + [Path(c) for c in candidates]
    nets = _lazy_nets(folders, dtype)
    x = [VocabTensors.of(f, net, head=False).embed(parts[:1])[0]
         for f, net in zip(folders, nets)]
    mx.eval(x)
    mask = create_attention_mask(x[0], None)
    start = time.perf_counter()
    mx.eval([net.model.layers[0](h, mask) for net, h in zip(nets, x)])
    layer = time.perf_counter() - start
    heads = [VocabTensors.of(f, net, head=True) for f, net in zip(folders, nets)]
    start = time.perf_counter()
    mx.eval([h.slice_logits(0, SLICE)(net.model.norm(y[0])) for h, net, y in
             zip(heads, nets, x)])
    head = time.perf_counter() - start
    positions = sum(len(p) for p in parts) / len(parts[0])
    return layer * len(nets[0].model.layers) * len(parts) + \
        head * positions * -(-heads[0].rows // SLICE)


def measure_conversion(output: Path, source: Path, tokens: int, *, chunk: int = DEFAULT_CHUNK,
                       before: Path | None = None,
                       progress: Callable[[str], Progress] | None = None,
                       limit_seconds: float | None = None) -> Quality:
    """What `convert` does after writing: ``output`` against its ``source`` on ``tokens`` of
    the built-in held-out text (and ``before``, the plain quantization a distilled recipe
    started from, in the same pass), recorded in quality.json and the model card. With
    ``limit_seconds``, a pass estimated to take longer is not run: :class:`TooSlow`."""
    parts = prepare(output, source, built_in_text(), chunk=chunk, limit=tokens)
    folders = [output] + ([before] if before else [])
    if limit_seconds is not None:
        seconds = estimate_seconds(source, folders, parts)
        if seconds > limit_seconds:
            raise TooSlow(seconds)
    results = evaluate(folders, source, parts, progress=progress)
    record(output, results[0], source, chunk, results[1] if before else None)
    return results[0]
