"""`qwen-mlx embed` and `qwen-mlx rerank`: what they print equals the Python API's results;
texts from arguments and from a file; mistakes are one line."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from qwen_mlx.cli import main


def run(*args, input=None):
    return CliRunner().invoke(main, list(map(str, args)), input=input)


def test_embed_prints_the_apis_vectors(tiny_q4_f32, tiny_model, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("The cat sat.\n\nA wave.\n")
    result = run("embed", tiny_q4_f32, "Hello", "-f", texts, "--instruct", "Find it")
    assert result.exit_code == 0, result.output
    got = np.array([json.loads(line) for line in result.output.splitlines()])
    want = tiny_model.embed(["Hello", "The cat sat.", "A wave."], instruction="Find it")
    assert got.shape == (3, 64) and np.abs(got - want).max() < 1e-6
    result = run("embed", tiny_q4_f32, "-f", "-", "--dimensions", "8", "--json",
                 input="Hello\n")
    record = json.loads(result.output)
    assert record["dimensions"] == 8 and np.abs(
        np.array(record["embeddings"]) - tiny_model.embed(["Hello"], dimensions=8)).max() < 1e-6


def test_rerank_prints_the_apis_order(tiny_q4_f32, tiny_model):
    docs = ["a cat on a mat", "the open sea", "a dog"]
    ranked = tiny_model.rerank("where is the cat?", docs)
    result = run("rerank", tiny_q4_f32, "where is the cat?", *docs)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"{s:.4f}  [{i + 1}] {docs[i]}" for i, s in ranked]
    result = run("rerank", tiny_q4_f32, "where is the cat?", *docs, "--top-n", "1", "--json")
    assert json.loads(result.output) == [{"index": ranked[0][0],
                                          "relevance_score": ranked[0][1],
                                          "document": docs[ranked[0][0]]}]


def test_embed_and_rerank_mistakes_are_one_line(tiny_q4_f32, tmp_path):
    assert run("embed", tiny_q4_f32).output == \
        "error: no texts: give them as arguments or one per line with -f FILE\n"
    assert run("embed", tiny_q4_f32, "x", "--dimensions", "65").output == \
        "error: --dimensions 65 is more than the model's 64\n"
    assert run("embed", tiny_q4_f32, "x", "  ").output == "error: text 2 is empty\n"
    assert run("rerank", tiny_q4_f32, " ", "doc").output == "error: the query is empty\n"
    missing = tmp_path / "none.txt"
    assert run("rerank", tiny_q4_f32, "q", "-f", missing).output == \
        f"error: cannot read {missing}: No such file or directory\n"
