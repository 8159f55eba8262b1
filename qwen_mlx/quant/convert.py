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

from ..models import card, provenance
from ..models.checkpoint import SENTENCE_FILES, Checkpoint
from ..models.provenance import PROVENANCE, SIDE_FILES
from ..models.recipes import Recipe
from ..models.sizes import METADATA, converted_tensors, output_shards, write_order
from ..storage.atomic import atomic_dir, atomic_write_text
from ..storage.safetensors import StreamingWriter, TensorInfo, shard_name

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
                    stored = opened[info.file].pop(info.stored or info.name)
                    arrays = _convert_tensor(stored, info, recipe)
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
        atomic_write_text(tmp / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
        write_config(tmp, ckpt.config, recipe)
        copy_side_files(ckpt.path, tmp)
        params = sum(math.prod(t.shape) for t in ckpt.tensors.values())
        report = ConvertReport(Path(output), recipe, params, disk, 0.0)
        # each file written under its name, so that a full disk names the file
        atomic_write_text(tmp / card.CARD, card.render(Path(output), source_name, recipe.name,
                                                       recipe_text(recipe), params, disk))
        atomic_write_text(tmp / PROVENANCE, json.dumps(
            provenance.record(ckpt.path, source_name, recipe.name), indent=2) + "\n")
    report.seconds = time.perf_counter() - start
    return report


def write_config(out: Path, config: dict, recipe: Recipe) -> None:
    config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    if recipe.quantization:
        # mlx-lm reads "quantization"; Hugging Face tooling looks for "quantization_config".
        config["quantization"] = recipe.quantization
        config["quantization_config"] = recipe.quantization
    config["torch_dtype"] = recipe.dtype
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")


def copy_side_files(src: Path, out: Path) -> None:
    for name in SIDE_FILES + SENTENCE_FILES:
        if (src / name).is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, out / name)
    template_file = out / "chat_template.jinja"
    if not template_file.exists() and (src / "tokenizer_config.json").is_file():
        # Also keep the template as its own file: easy to read, diff and edit.
        template = json.loads((src / "tokenizer_config.json").read_text()).get("chat_template")
        if isinstance(template, str):
            template_file.write_text(template)


def recipe_text(r: Recipe) -> str:
    """What a recipe does, for the model card."""
    if r.layers:
        return (f"affine, bits and group size per layer from measured sensitivity "
                f"({r.bits}-bit in groups of {r.group_size} but {len(r.layers)} layers; "
                f"config.json lists them), scales in {r.dtype}")
    return (f"affine {r.bits}-bit, group size {r.group_size}, scales in {r.dtype}"
            if r.bits else f"not quantized ({r.dtype})")
