"""Model resolution: aliases, repo ids, folders, the conversion cache, offline downloads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_mlx.hub import resolver as hub

from qwen_mlx import load
from qwen_mlx.errors import QwenMlxError
from qwen_mlx.models.recipes import Recipe


def test_aliases_and_repo_ids():
    assert hub.parse_arg(None).repo_id == "Qwen/Qwen3-4B-Instruct-2507"
    assert hub.parse_arg("qwen3-4b-instruct-2507").repo_id == "Qwen/Qwen3-4B-Instruct-2507"
    assert hub.parse_arg("Qwen3-4B").repo_id == "Qwen/Qwen3-4B"
    assert hub.parse_arg("mlx-community/Qwen3-4B-4bit").repo_id == "mlx-community/Qwen3-4B-4bit"
    with pytest.raises(QwenMlxError, match="model folder ./a/b does not exist"):
        hub.parse_arg("./a/b")


def test_cache_location_follows_qwen_mlx_home(tmp_path):
    spec = hub.parse_arg("qwen3-4b")
    assert hub.cache_dir(spec, Recipe()) == \
        tmp_path / "qwen-mlx-home" / "models" / "Qwen--Qwen3-4B" / "q4"
    assert hub.cache_dir(spec, Recipe(bits=8, dtype="float32")).name == "q8-f32"


def test_hub_model_downloads_and_converts_once(tiny_hf, monkeypatch, tmp_path):
    downloads, conversions = [], []

    def fake_download(repo_id):
        downloads.append(repo_id)
        return tiny_hf

    monkeypatch.setattr(hub, "download", fake_download)
    from qwen_mlx.quant import convert as quantize

    real_convert = quantize.convert
    monkeypatch.setattr(quantize, "convert",
                        lambda *a, **k: conversions.append(a) or real_convert(*a, **k))
    first = load()  # the default model
    expected = tmp_path / "qwen-mlx-home" / "models" / "Qwen--Qwen3-4B-Instruct-2507" / "q4"
    assert first.path == expected and (expected / "qwen-mlx.json").is_file()
    assert "base_model: Qwen/Qwen3-4B-Instruct-2507" in (expected / "README.md").read_text()
    second = load("qwen3-4b-instruct-2507")
    assert second.path == expected
    assert downloads == ["Qwen/Qwen3-4B-Instruct-2507"] and len(conversions) == 1


def test_local_hf_folder_is_converted_into_the_cache_and_refreshed_when_it_changes(
        tiny_hf, copy_of):
    src = copy_of(tiny_hf)
    spec = hub.resolve(str(src))
    folder = spec.folder
    assert folder.parent.name.startswith("local--copy--") and folder.name == "q4"
    assert (spec.name, spec.recipe.name, spec.eos_ids) == (str(src), "q4", [151645, 151643])
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert hub.resolve(str(src)).folder == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not redone
    shard = src / "model.safetensors"
    os.utime(shard, (shard.stat().st_atime, shard.stat().st_mtime + 10))
    hub.resolve(str(src))
    assert (folder / "model.safetensors").stat().st_mtime_ns != stamp  # source changed: redone


def test_mlx_folder_is_used_in_place(tiny_q4, monkeypatch):
    assert hub.resolve(str(tiny_q4)).folder == tiny_q4
    monkeypatch.setattr(hub, "download", lambda repo_id: tiny_q4)  # an mlx-community repo
    spec = hub.resolve("mlx-community/Qwen3-4B-4bit")
    assert (spec.folder, spec.name, spec.recipe.name) == (tiny_q4, "mlx-community/Qwen3-4B-4bit",
                                                          "q4")


def test_planning_resolves_without_converting(tiny_hf, tmp_path):
    """weights=False (the memory planner): the source's config, no folder, nothing written."""
    spec = hub.resolve(str(tiny_hf), Recipe(bits=8), weights=False)
    assert spec.folder is None and spec.recipe.name == "q8"
    assert spec.config["hidden_size"] == 64 and spec.positions == 262_144
    assert spec.sampling_defaults().temperature == 0.7  # the source's generation_config
    assert not (hub.home() / "models").exists()


def test_offline_download_fails_in_one_line():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(QwenMlxError) as e:
        hub.download("Qwen/Qwen3-4B-Instruct-2507")
    assert str(e.value) == ("Qwen/Qwen3-4B-Instruct-2507 is not in the Hugging Face cache and "
                            "HF_HUB_OFFLINE is set: unset it to download once, or pass a local "
                            "model folder (`qwen-mlx models sources` lists what the cache holds)")
    assert not Path(os.environ["HF_HOME"], "hub", "models--Qwen--Qwen3-4B-Instruct-2507",
                    "snapshots").exists()


def test_download_path_reads_the_hugging_face_cache_under_hf_home(tiny_hf, tmp_path):
    """The real huggingface_hub path, offline: a snapshot already in $HF_HOME is used."""
    import shutil
    import subprocess
    import sys

    repo = tmp_path / "hf" / "hub" / "models--Qwen--Qwen3-4B"
    commit = "0" * 40
    shutil.copytree(tiny_hf, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "QWEN_MLX_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "qwen_mlx", "convert", "qwen3-4b"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "home" / "models" / "Qwen--Qwen3-4B" / "q4"
    assert proc.stdout == f"{out}\n"
    assert (out / "model.safetensors").is_file()


def test_an_unreachable_hub_is_told_apart_from_offline_mode(tmp_path):
    """Online mode, but the hub is a closed port on this machine: say so, and the ways out."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run([sys.executable, "-m", "qwen_mlx", "generate",
                             "Qwen/Qwen3-4B-Instruct-2507", "-p", "Hi"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: cannot reach the Hugging Face hub for Qwen/Qwen3-4B-Instruct-2507, and it is "
        "not in the cache: go online once to download it, or pass a local model folder "
        "(`qwen-mlx models sources` lists what the cache holds)")
