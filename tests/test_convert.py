"""Conversion: the output loads in mlx-lm unchanged and holds the right numbers."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest
from mlx_lm.utils import load as mlx_lm_load

from qwen_mlx.errors import QwenMlxError
from qwen_mlx.quant.convert import convert
from qwen_mlx.models.recipes import Recipe, parse_recipe
from qwen_mlx.storage.safetensors import read_header
from qwen_mlx.testing import make_checkpoint


def _weights(folder):
    out = {}
    for f in sorted(folder.glob("model*.safetensors")):
        out.update(mx.load(str(f)))
    return out


def test_q4_loads_in_mlx_lm_with_quantization_block(tiny_q4):
    config = json.loads((tiny_q4 / "config.json").read_text())
    block = {"group_size": 64, "bits": 4, "mode": "affine"}
    assert config["quantization"] == block
    assert config["quantization_config"] == block
    model, tokenizer = mlx_lm_load(str(tiny_q4))
    assert model.model.embed_tokens.bits == 4
    assert model.model.layers[0].self_attn.q_proj.group_size == 64
    assert tokenizer.encode("Hello world") == [9707, 1879]
    files = {p.name for p in tiny_q4.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "model.safetensors", "model.safetensors.index.json",
            "README.md", "qwen-mlx.json"} <= files
    assert not any(name.startswith(".") for name in files)


def test_dequantized_weights_are_within_one_step_of_the_originals(tiny_hf, tiny_q4_f32):
    src, out = _weights(tiny_hf), _weights(tiny_q4_f32)
    quantized = [n for n in src if n.replace(".weight", ".scales") in out]
    assert "model.embed_tokens.weight" in quantized and len(quantized) == 1 + 2 * 7
    for name in quantized:
        base = name.removesuffix(".weight")
        w = src[name].astype(mx.float32)
        scales, biases = out[base + ".scales"], out[base + ".biases"]
        deq = mx.dequantize(out[name], scales, biases, group_size=64, bits=4)
        step = mx.repeat(scales, 64, axis=1)  # one quantization step per element
        ratio = mx.abs(deq - w) / mx.abs(step)
        # mlx snaps each group's zero point, so the worst case is one step; rounding to the
        # nearest level makes the average a quarter step.
        assert mx.max(ratio).item() <= 1.0 + 1e-4, name
        assert 0.2 < mx.mean(ratio).item() < 0.3, name
    # Unquantized tensors (norms) are copied exactly, cast to the recipe's dtype.
    assert mx.array_equal(out["model.norm.weight"], src["model.norm.weight"].astype(mx.float32))


def test_bits_per_weight_and_model_card(tiny_q4):
    card = (tiny_q4 / "README.md").read_text()
    assert "`q4`: affine 4-bit, group size 64" in card
    # 4 bits + a bf16 scale and bias per 64 weights = 4.5; norms add a little.
    bpw = float(card.split("| bits per weight | ")[1].split(" ")[0])
    assert 4.5 <= bpw < 4.52


@pytest.mark.parametrize("recipe", ["q8", "q4-g32", "q4-g128"])
def test_other_recipes_load(tiny_hf, tmp_path, recipe):
    r = parse_recipe(recipe)
    out = tmp_path / recipe
    convert(tiny_hf, out, r)
    model, _ = mlx_lm_load(str(out))
    q = model.model.layers[0].mlp.down_proj
    assert (q.bits, q.group_size) == (r.bits, r.group_size)  # rows of 128: whole groups
    up = model.model.layers[0].mlp.up_proj  # rows of 64: quantized unless groups are 128
    assert ("scales" in up) == (r.group_size != 128)
    logits = model(mx.array([[9707, 1879]]))
    assert logits.shape == (1, 2, 151936) and not mx.any(mx.isnan(logits)).item()


def test_sharded_untied_source_streams_into_sharded_output(tmp_path, tokenizer_bytes,
                                                           monkeypatch):
    import qwen_mlx.models.sizes as q

    src = make_checkpoint(tmp_path / "src", "tiny", shard_bytes=4 << 20, seed=3,
                          config_overrides={"tie_word_embeddings": False},
                          tokenizer_json_bytes=tokenizer_bytes)
    assert (src / "model.safetensors.index.json").is_file()
    monkeypatch.setattr(q, "SHARD_BYTES", 2 << 20)
    out = tmp_path / "out"
    convert(src, out, Recipe())
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and all((out / s).is_file() for s in shards)
    assert "lm_head.scales" in index["weight_map"]
    assert index["metadata"]["total_size"] == sum((out / s).stat().st_size for s in shards)
    for s in shards:
        tensors, meta = read_header(out / s)
        assert meta == {"format": "mlx"} and tensors
    model, _ = mlx_lm_load(str(out))
    assert model.lm_head.bits == 4


def test_tied_checkpoint_with_a_stray_lm_head_drops_it(tiny_hf, copy_of):
    src = copy_of(tiny_hf)
    w = mx.load(str(src / "model.safetensors"))
    w["lm_head.weight"] = w["model.embed_tokens.weight"]
    mx.save_safetensors(str(src / "model.safetensors"), w, metadata={"format": "pt"})
    out = src.parent / "out"
    convert(src, out, Recipe())
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert not any(k.startswith("lm_head") for k in index["weight_map"])
    mlx_lm_load(str(out))


def test_interrupted_conversion_leaves_nothing(tiny_hf, tmp_path):
    out = tmp_path / "out"
    calls = []

    def interrupt(done, total):
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(tiny_hf, out, Recipe(), progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_an_existing_model_output_but_not_a_users_folder(tiny_hf, tmp_path):
    out = tmp_path / "out"
    convert(tiny_hf, out, Recipe())
    convert(tiny_hf, out, Recipe(bits=8), force=True)
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(QwenMlxError, match=r"--force will not replace .*out: it holds "
                                           r"notes.txt; --force replaces only a model"):
        convert(tiny_hf, out, Recipe(), force=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 8
