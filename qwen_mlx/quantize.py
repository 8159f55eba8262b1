"""Streaming conversion of a Hugging Face Qwen3 checkpoint into an MLX folder.

The output is exactly what ``mlx_lm.load`` expects (quantized ``weight``/``scales``/``biases``
triples, a ``quantization`` block in config.json, shards with an index), but it is produced
one tensor at a time: each source tensor is read from its shard, cast, quantized and streamed
into its output file before the next is touched. Peak memory is about the largest tensor
(the embedding), where loading the model first would need all of it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx

from . import __version__
from .atomic import atomic_dir
from .checkpoint import TOKENIZER_FILES, Checkpoint
from .recipes import Recipe
from .safetensors_stream import (StreamingWriter, TensorInfo, file_nbytes, plan_shards,
                                 shard_name, tensor_nbytes)

SHARD_BYTES = 2 << 30  # output files of at most ~2 GiB (a tensor is never split)
PROVENANCE = "qwen-mlx.json"
QUALITY = "quality.json"  # written by `convert` after measuring (qwen_mlx.quality)

METADATA = {"format": "mlx"}  # what mlx-lm's own files carry

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass
class ConvertReport:
    output: Path
    recipe: Recipe
    parameters: int
    bytes_on_disk: int
    seconds: float

    @property
    def bits_per_weight(self) -> float:
        return self.bytes_on_disk * 8 / self.parameters


def converted_tensors(info: TensorInfo,
                      recipe: Recipe) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of what one source tensor becomes."""
    dtype = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}[recipe.dtype]
    if not recipe.quantizes(info.shape):
        return [(info.name, dtype, info.shape)]
    rows, cols = info.shape
    base = info.name.removesuffix(".weight")
    bits, group = recipe.format_for(base)
    groups = (rows, cols // group)
    return [(f"{base}.weight", "U32", (rows, cols * bits // 32)),
            (f"{base}.scales", dtype, groups), (f"{base}.biases", dtype, groups)]


def write_order(ckpt: Checkpoint) -> list[TensorInfo]:
    """Files in order and tensors in on-disk order, so reads stay sequential."""
    file_order = {f: i for i, f in enumerate(ckpt.files)}
    return sorted(ckpt.tensors.values(), key=lambda t: (file_order[t.file], t.name))


def output_shards(tensors: list, recipe: Recipe) -> list[list]:
    """The source tensors (in write order) grouped into output files of <= SHARD_BYTES."""
    return plan_shards(tensors, lambda info: sum(
        tensor_nbytes(d, shape) for _, d, shape in converted_tensors(info, recipe)), SHARD_BYTES)


def planned_bytes(tensors: list, recipe: Recipe) -> int:
    """The exact size on disk of the weights ``convert`` writes for ``tensors`` (anything with
    ``name`` and ``shape``, in write order): headers and data of every shard. A size budget is
    checked against this, before anything is computed."""
    return sum(file_nbytes([e for info in shard for e in converted_tensors(info, recipe)],
                           METADATA) for shard in output_shards(tensors, recipe))


def _convert_tensor(array: mx.array, info: TensorInfo, recipe: Recipe) -> list[mx.array]:
    array = array.astype(getattr(mx, recipe.dtype))
    if not recipe.quantizes(info.shape):
        return [array]
    bits, group = recipe.format_for(info.name.removesuffix(".weight"))
    return list(mx.quantize(array, group_size=group, bits=bits))


def convert(source: Path | Checkpoint, output: Path, recipe: Recipe, *, force: bool = False,
            source_name: str | None = None, progress: Progress | None = None) -> ConvertReport:
    """Convert the checkpoint in ``source`` (a folder, or one already validated) into an MLX
    folder at ``output``. The folder appears only when complete; ``force`` replaces an
    existing one.
    """
    start = time.perf_counter()
    ckpt = source if isinstance(source, Checkpoint) else Checkpoint.open(Path(source))
    source_name = source_name or str(ckpt.path.resolve())
    shards = output_shards(write_order(ckpt), recipe)
    total, done = ckpt.nbytes, 0
    with atomic_dir(Path(output), force=force, protect=[ckpt.path]) as tmp:
        weight_map: dict[str, str] = {}
        for i, shard in enumerate(shards):
            fname = shard_name(i, len(shards))
            entries = [e for info in shard for e in converted_tensors(info, recipe)]
            with StreamingWriter(tmp / fname, entries, METADATA) as writer:
                opened: dict[Path, dict[str, mx.array]] = {}
                for info in shard:
                    if info.file not in opened:  # mx.load is lazy: nothing is read yet
                        opened = {info.file: mx.load(str(info.file))}
                    arrays = _convert_tensor(opened[info.file].pop(info.name), info, recipe)
                    mx.eval(arrays)
                    for (name, _, _), array in zip(converted_tensors(info, recipe), arrays):
                        writer.write(name, array)
                        weight_map[name] = fname
                    del arrays
                    done += info.nbytes
                    if progress:
                        progress(done, total)
        disk = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
        index = {"metadata": {"total_size": disk}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        write_config(tmp, ckpt.config, recipe)
        copy_side_files(ckpt.path, tmp)
        params = sum(math.prod(t.shape) for t in ckpt.tensors.values())
        report = ConvertReport(Path(output), recipe, params, disk, 0.0)
        (tmp / "README.md").write_text(_model_card(source_name, report))
        (tmp / PROVENANCE).write_text(json.dumps(provenance(ckpt.path, source_name, recipe),
                                                  indent=2) + "\n")
    report.seconds = time.perf_counter() - start
    return report


def provenance(source: Path, source_name: str, recipe: Recipe) -> dict:
    """What `qwen-mlx models` shows and the cache checks: where a conversion came from."""
    real = Path(source).resolve()
    return {"source": source_name, "source_path": str(real),
            # a hub download sits in the Hugging Face cache at .../snapshots/<revision>
            "revision": real.name if real.parent.name == "snapshots" else None,
            "recipe": recipe.name, "qwen_mlx_version": __version__,
            "converted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source_fingerprint": fingerprint(real)}


# What a conversion copies from its source as it is, besides config.json and the weights.
SIDE_FILES = TOKENIZER_FILES + ("generation_config.json", "LICENSE")


def fingerprint(folder: Path) -> list:
    """Names, sizes and modification times of every source file a conversion reads or
    copies (weights, config, tokenizer, template): changes when any of them changes, so a
    fixed tokenizer is converted anew rather than served stale from the cache."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) + [
        folder / name for name in ("config.json", "model.safetensors.index.json", *SIDE_FILES)
        if (folder / name).is_file()]
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def write_config(out: Path, config: dict, recipe: Recipe) -> None:
    config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    if recipe.quantization:
        # mlx-lm reads "quantization"; Hugging Face tooling looks for "quantization_config".
        config["quantization"] = recipe.quantization
        config["quantization_config"] = recipe.quantization
    config["torch_dtype"] = recipe.dtype
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def copy_side_files(src: Path, out: Path) -> None:
    for name in SIDE_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    template_file = out / "chat_template.jinja"
    if not template_file.exists() and (src / "tokenizer_config.json").is_file():
        # Also keep the template as its own file: easy to read, diff and edit.
        template = json.loads((src / "tokenizer_config.json").read_text()).get("chat_template")
        if isinstance(template, str):
            template_file.write_text(template)


def _model_card(source: str, report: ConvertReport) -> str:
    r = report.recipe
    quant = (f"affine {r.bits}-bit, group size {r.group_size}, scales in {r.dtype}"
             if r.bits else f"not quantized ({r.dtype})")
    if r.layers:
        quant = (f"affine, bits and group size per layer from measured sensitivity "
                 f"({r.bits}-bit in groups of {r.group_size} but {len(r.layers)} layers; "
                 f"config.json lists them), scales in {r.dtype}")
    return f"""---
library_name: mlx
pipeline_tag: text-generation
base_model: {source}
tags: [mlx, qwen3, qwen-mlx]
---
# {Path(source).name} ({r.name}, MLX)

Converted by qwen-mlx {__version__} from `{source}`.

| | |
|---|---|
| recipe | `{r.name}`: {quant} |
| parameters | {report.parameters:,} |
| size on disk | {report.bytes_on_disk / 1e9:.3f} GB |
| bits per weight | {report.bits_per_weight:.3f} |

Use it with `qwen-mlx chat {report.output}` or `mlx_lm.load("{report.output}")`.
"""
