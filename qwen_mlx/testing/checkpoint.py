"""Random-weight Qwen3 checkpoints in Hugging Face layout, for tests and benchmarks.

They look like a snapshot of Qwen/Qwen3-4B-Instruct-2507: config.json with Qwen3's keys,
bfloat16 safetensors under the real tensor names (sharded with an index when large),
generation_config.json, and the real tokenizer with our own Qwen3-format chat template.
Weights are random, so the text is gibberish, but varied: greedy decoding does not collapse.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

from ..models.shapes import expected_shapes
from ..storage.safetensors import plan_shards, shard_name, tensor_nbytes
from ..models.shapes import SHAPES, config_for  # noqa: F401 - SHAPES is re-exported
from .tokenizer import write_tokenizer

GENERATION_CONFIG = {"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
                     "pad_token_id": 151643, "temperature": 0.7, "top_k": 20, "top_p": 0.8}


OUTLIER_GAIN = 20.0
OUTLIER_LAYERS = 2  # the first layers get them, as in real models


def random_tensor(name: str, shape: tuple[int, ...], outliers: int = 0,
                  embed_std: float = 1.0) -> mx.array:
    """Embeddings of standard deviation ``embed_std`` (1: unit variance, whose tied output
    layer gives logits of standard deviation sqrt(hidden_size), far sharper than a trained
    model's), 1.6/sqrt(fan_in) projections, unit norms. With
    ``outliers``, the projections of the first OUTLIER_LAYERS layers get that many input
    channels OUTLIER_GAIN times larger (the same channels in every projection of a layer),
    as real LLMs have: one such column stretches the quantization scale of every group it
    falls in."""
    if len(shape) == 1:
        return mx.ones(shape, dtype=mx.bfloat16)
    std = embed_std if "embed_tokens" in name else 1.6 / shape[1] ** 0.5
    weight = mx.random.normal(shape) * std
    layer = _layer_of(name)
    if outliers and layer is not None and layer < OUTLIER_LAYERS and name.endswith("proj.weight"):
        channels = mx.random.permutation(shape[1], key=mx.random.key(1000 + layer))[:outliers]
        gain = mx.ones((shape[1],)).at[channels].multiply(OUTLIER_GAIN)
        weight = weight * gain
    return weight.astype(mx.bfloat16)


def _layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else None


def make_checkpoint(out: Path, shape: str = "tiny", *, seed: int = 0,
                    shard_bytes: int = 2 << 30, config_overrides: dict | None = None,
                    tokenizer_json_bytes: bytes | None = None, outliers: int = 0,
                    embed_std: float = 1.0) -> Path:
    """Write a random Qwen3 checkpoint to ``out`` and return it (``outliers``,
    ``embed_std``: see :func:`random_tensor`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {**config_for(shape), **(config_overrides or {})}
    write_tokenizer(out, model_max_length=config["max_position_embeddings"],
                    tokenizer_json_bytes=tokenizer_json_bytes)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    mx.random.seed(seed)
    shards = plan_shards(list(expected_shapes(config).items()),
                         lambda item: tensor_nbytes("BF16", item[1]), shard_bytes)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = shard_name(i, len(shards))
        arrays = {name: random_tensor(name, shp, outliers, embed_std) for name, shp in shard}
        mx.save_safetensors(str(out / fname), arrays, metadata={"format": "pt"})
        weight_map.update({name: fname for name in arrays})
        del arrays
    if len(shards) > 1:
        total = sum(tensor_nbytes("BF16", s) for shard in shards for _, s in shard)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


# sentence-transformers' description of Qwen3-Embedding: last-token pooling, normalized
SENTENCE_TRANSFORMERS = {
    "modules.json": [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}],
    "config_sentence_transformers.json": {
        "prompts": {"query": "Instruct: Given a web search query, retrieve relevant passages "
                             "that answer the query\nQuery:", "document": ""},
        "default_prompt_name": None, "similarity_fn_name": "cosine"},
    "1_Pooling/config.json": {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
                              "pooling_mode_max_tokens": False,
                              "pooling_mode_mean_sqrt_len_tokens": False,
                              "pooling_mode_weightedmean_tokens": False,
                              "pooling_mode_lasttoken": True, "include_prompt": True},
}
# Qwen3-Embedding's tokenizer.json appends the end of text itself (a fix its repositories got
# after release); qwen-mlx appends it to raw token ids (engine/embed.py), either way once
APPEND_END = {"type": "TemplateProcessing",
              "single": [{"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
              "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                       {"Sequence": {"id": "B", "type_id": 1}},
                       {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}}],
              "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [151643],
                                                   "tokens": ["<|endoftext|>"]}}}


def make_embedding_checkpoint(out: Path, shape: str = "tiny", *, seed: int = 0,
                              tokenizer_json_bytes: bytes | None = None) -> Path:
    """A random Qwen3-Embedding checkpoint: transformers' ``Qwen3Model`` (its tensors
    named without "model.", no output layer) with sentence-transformers' files."""
    out = make_checkpoint(out, shape, seed=seed, tokenizer_json_bytes=tokenizer_json_bytes,
                          config_overrides={"architectures": ["Qwen3Model"],
                                            "tie_word_embeddings": False})
    for f in out.glob("model*.safetensors"):
        arrays = mx.load(str(f))
        renamed = {k.removeprefix("model."): v for k, v in arrays.items() if k != "lm_head.weight"}
        mx.save_safetensors(str(f), renamed, metadata={"format": "pt"})
    index = out / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {k.removeprefix("model."): v for k, v in data["weight_map"].items()
                              if k != "lm_head.weight"}
        index.write_text(json.dumps(data, indent=2) + "\n")
    config = json.loads((out / "config.json").read_text())
    files = {**SENTENCE_TRANSFORMERS, "1_Pooling/config.json": {
        "word_embedding_dimension": config["hidden_size"],
        **SENTENCE_TRANSFORMERS["1_Pooling/config.json"]}}
    for name, content in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(content, indent=2) + "\n")
    tokenizer = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    processors = [p for p in [tokenizer.get("post_processor")] if p] + [APPEND_END]
    tokenizer["post_processor"] = {"type": "Sequence", "processors": processors}
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False),
                                        encoding="utf-8")
    return out

