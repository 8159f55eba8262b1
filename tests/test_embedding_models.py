"""Qwen3-Embedding checkpoints (transformers' Qwen3Model: no output layer, tensors named
without "model."): `convert` takes them and keeps sentence-transformers' files, the result
loads in `mlx_lm.load` unchanged, embeds as the model card says, and refuses to generate or
rerank with one line (CLI) or a 400 (server)."""

from __future__ import annotations

import json

import httpx
import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from qwen_mlx import load
from qwen_mlx.cli import main
from qwen_mlx.hub.resolver import parse_arg
from qwen_mlx.serve import Server
from qwen_mlx.testing import make_embedding_checkpoint

from .conftest import built_once
from .serving import Running


@pytest.fixture(scope="module")
def embedding_hf(tmp_path_factory, tokenizer_bytes):
    return built_once(tmp_path_factory, "embedding-hf", lambda out: make_embedding_checkpoint(
        out, "tiny", seed=2, tokenizer_json_bytes=tokenizer_bytes))


@pytest.fixture(scope="module")
def embedding(tmp_path_factory, embedding_hf):
    out = tmp_path_factory.mktemp("embedding") / "q4"
    result = CliRunner().invoke(main, ["convert", str(embedding_hf), "-o", str(out),
                                       "--dtype", "float32", "--eval-tokens", "512"])
    assert result.exit_code == 0, result.output
    assert "is an embedding model: no next-token quality pass" in result.output
    return out


def test_convert_keeps_the_sentence_transformers_files_and_mlx_lm_loads_it(embedding,
                                                                          embedding_hf):
    for name in ("modules.json", "config_sentence_transformers.json", "1_Pooling/config.json"):
        assert (embedding / name).read_text() == (embedding_hf / name).read_text()
    pooling = json.loads((embedding / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_lasttoken"] and pooling["word_embedding_dimension"] == 64
    config = json.loads((embedding / "config.json").read_text())
    assert config["architectures"] == ["Qwen3Model"] and config["tie_word_embeddings"]
    from mlx_lm import load as mlx_load

    net, tok = mlx_load(str(embedding))  # unchanged: its own loader, its own names
    texts = ["The cat sat on the mat.", "Hi"]
    ours = load(embedding).embed(texts)
    for i, text in enumerate(texts):
        ids = tok.encode(text)  # its tokenizer appends the end of text, as Qwen's does
        assert ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>") != ids[-2]
        hidden = np.array(net.model(mx.array(ids)[None])[0, -1].astype(mx.float32))
        assert np.abs(ours[i] - hidden / np.linalg.norm(hidden)).max() < 1e-4


def test_an_embedding_model_refuses_to_generate_and_rerank(embedding):
    said = f"{embedding.name} is an embedding model (Qwen3-Embedding): it only embeds"
    result = CliRunner().invoke(main, ["generate", str(embedding), "-p", "hi"])
    assert result.exit_code == 1 and result.output.startswith(f"error: {said}")
    result = CliRunner().invoke(main, ["rerank", str(embedding), "q", "doc"])
    assert result.exit_code == 1 and result.output.startswith(f"error: {said}")
    running = Running(Server(load(embedding, context=1024), "emb"))
    try:
        r = httpx.post(f"{running.url}/v1/embeddings", json={"model": "emb", "input": "hi"})
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 64
        for path, body in [("/v1/chat/completions", {"messages": [{"role": "user",
                                                                   "content": "hi"}]}),
                           ("/api/generate", {"prompt": "hi", "stream": False}),
                           ("/v1/completions", {"prompt": "hi"}),
                           ("/v1/rerank", {"query": "q", "documents": ["d"]})]:
            r = httpx.post(f"{running.url}{path}", json={"model": "emb", **body})
            assert r.status_code == 400, (path, r.text)
            assert said in r.text
    finally:
        running.stop()


def test_the_retrieval_models_have_aliases():
    assert parse_arg("qwen3-embedding-0.6b").repo_id == "Qwen/Qwen3-Embedding-0.6B"
    assert parse_arg("qwen3-embedding-8b").repo_id == "Qwen/Qwen3-Embedding-8B"
    assert parse_arg("qwen3-reranker-4b").repo_id == "Qwen/Qwen3-Reranker-4B"
