"""Embeddings and reranking (engine/embed.py, serve/embeddings.py): equal to an independent
computation from mlx-lm's hidden states and logits, pooled and scored in numpy as the
Qwen3-Embedding and Qwen3-Reranker cards say, batched and one at a time, with an instruction
and with ``dimensions``; served over OpenAI's /v1/embeddings (the ``openai`` client, float and
base64), Ollama's /api/embed and /api/embeddings (the ``ollama`` client), LangChain's
OpenAIEmbeddings, litellm, and /v1/rerank; bad input is a 400 naming the field."""

from __future__ import annotations

import base64

import httpx
import mlx.core as mx
import numpy as np
import ollama
import openai
import pytest

from qwen_mlx import load

from .serving import MODEL

TEXTS = ["The cat sat on the mat.", "Hi", "A longer sentence about the sea, its many tides "
         "and the waves that come in from far away."]


@pytest.fixture(scope="module")
def reference(tiny_q4_f32):
    """mlx-lm's own model and tokenizer: nothing of ours."""
    from mlx_lm import load as mlx_load

    return mlx_load(str(tiny_q4_f32))


def independent_embedding(reference, text: str, dimensions: int | None = None) -> np.ndarray:
    net, tok = reference
    ids = tok.encode(text) + [tok.convert_tokens_to_ids("<|endoftext|>")]
    hidden = np.array(net.model(mx.array(ids)[None])[0, -1].astype(mx.float32))
    hidden = hidden[:dimensions] if dimensions else hidden
    return hidden / np.linalg.norm(hidden)


def independent_score(reference, query: str, document: str) -> float:
    """Qwen3-Reranker's card: prefix, the pair, suffix; softmax(no, yes)[yes] at the end."""
    net, tok = reference
    prefix = ("<|im_start|>system\nJudge whether the Document meets the requirements based "
              "on the Query and the Instruct provided. Note that the answer can only be "
              "\"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    pair = ("<Instruct>: Given a web search query, retrieve relevant passages that answer the "
            f"query\n<Query>: {query}\n<Document>: {document}")
    ids = tok.encode(prefix) + tok.encode(pair) + tok.encode(suffix)
    logits = np.array(net(mx.array(ids)[None])[0, -1].astype(mx.float32))
    yes, no = logits[tok.convert_tokens_to_ids("yes")], logits[tok.convert_tokens_to_ids("no")]
    return float(np.exp(yes) / (np.exp(yes) + np.exp(no)))


def test_embeddings_equal_the_model_cards_computation(tiny_model, reference):
    batched = tiny_model.embed(TEXTS)
    assert batched.dtype == np.float32 and batched.shape == (3, 64)
    for i, text in enumerate(TEXTS):
        want = independent_embedding(reference, text)
        assert np.abs(batched[i] - want).max() < 1e-4
        assert np.abs(tiny_model.embed([text])[0] - want).max() < 1e-4  # alone
    queries = tiny_model.embed(TEXTS, instruction="Find the animal")
    for i, text in enumerate(TEXTS):
        want = independent_embedding(reference, f"Instruct: Find the animal\nQuery:{text}")
        assert np.abs(queries[i] - want).max() < 1e-4
    short = tiny_model.embed(TEXTS, dimensions=32)
    assert short.shape == (3, 32)
    for i, text in enumerate(TEXTS):
        assert np.abs(short[i] - independent_embedding(reference, text, 32)).max() < 1e-4


def test_rerank_scores_equal_the_model_cards_computation(tiny_model, reference):
    ranked = tiny_model.rerank("Where do cats sit?", TEXTS)
    assert sorted(i for i, _ in ranked) == [0, 1, 2]
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    for i, score in ranked:
        assert score == pytest.approx(independent_score(reference, "Where do cats sit?",
                                                        TEXTS[i]), abs=1e-4)
    assert tiny_model.rerank("Where do cats sit?", TEXTS, top_n=1) == ranked[:1]


def test_the_openai_and_ollama_clients_get_the_same_vectors(running, tiny_model):
    want = tiny_model.embed(TEXTS)
    client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
    out = client.embeddings.create(model=MODEL, input=TEXTS)
    assert [d.index for d in out.data] == [0, 1, 2]
    assert np.abs(np.array([d.embedding for d in out.data]) - want).max() < 1e-6
    ids = [tiny_model.encode(t, raw=True) for t in TEXTS]
    assert out.usage.prompt_tokens == sum(len(i) + 1 for i in ids)
    # token ids, base64 (the SDK decodes it), dimensions
    raw = httpx.post(f"{running.url}/v1/embeddings", json={
        "model": MODEL, "input": ids[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), "<f4")
    assert np.abs(decoded - want[0]).max() < 1e-6
    short = client.embeddings.create(model=MODEL, input=TEXTS[0], dimensions=16)
    assert np.abs(np.array(short.data[0].embedding) - tiny_model.embed(
        TEXTS[:1], dimensions=16)[0]).max() < 1e-6
    # Ollama's two endpoints
    local = ollama.Client(host=running.url)
    embedded = local.embed(model=MODEL, input=TEXTS)
    assert np.abs(np.array(embedded.embeddings) - want).max() < 1e-6
    assert embedded.prompt_eval_count == out.usage.prompt_tokens
    older = local.embeddings(model=MODEL, prompt=TEXTS[1])
    assert np.abs(np.array(older.embedding) - want[1]).max() < 1e-6
    # LangChain, as RAG code calls it
    from langchain_openai import OpenAIEmbeddings

    chain = OpenAIEmbeddings(model=MODEL, base_url=f"{running.url}/v1", api_key="x",
                             check_embedding_ctx_length=False)
    assert np.abs(np.array(chain.embed_documents(TEXTS)) - want).max() < 1e-6
    from langchain_ollama import OllamaEmbeddings

    chain = OllamaEmbeddings(model=MODEL, base_url=running.url)
    assert np.abs(np.array(chain.embed_query(TEXTS[0])) - want[0]).max() < 1e-6


def test_litellm_gets_the_same_vectors(running, tiny_model, monkeypatch):
    """litellm.embedding through its OpenAI-compatible provider, as proxies and RAG tools
    call it (its model-price table read from the package, not fetched)."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    out = litellm.embedding(model=f"openai/{MODEL}", input=TEXTS, api_key="x",
                            api_base=f"{running.url}/v1")
    got = np.array([d["embedding"] for d in out.data])
    assert np.abs(got - tiny_model.embed(TEXTS)).max() < 1e-6
    assert out.usage.prompt_tokens == sum(len(tiny_model.encode(t, raw=True)) + 1
                                          for t in TEXTS)


def test_rerank_over_http(running, tiny_model):
    want = tiny_model.rerank("Where do cats sit?", TEXTS)
    for path in ("/v1/rerank", "/rerank"):
        r = httpx.post(f"{running.url}{path}", json={
            "model": MODEL, "query": "Where do cats sit?", "top_n": 2, "return_documents": True,
            "documents": [TEXTS[0], {"text": TEXTS[1]}, TEXTS[2]]})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [(x["index"], x["document"]["text"]) for x in results] == \
            [(i, TEXTS[i]) for i, _ in want[:2]]
        assert [x["relevance_score"] for x in results] == pytest.approx(
            [s for _, s in want[:2]], abs=1e-6)


@pytest.mark.parametrize("path, body, message", [
    ("/v1/embeddings", {"input": ""}, "'input[0]' is empty"),
    ("/v1/embeddings", {"input": []}, "'input' must be a non-empty string or list"),
    ("/v1/embeddings", {"input": ["x"] * 10_000}, "'input' has 10,000 items; at most 2,048"),
    ("/v1/embeddings", {"input": ["a", 3]}, "'input[1]' must be text or a list of token ids"),
    ("/v1/embeddings", {"input": [[1, -2]]}, "'input[0]' must hold token ids from 0 to"),
    ("/v1/embeddings", {"input": "a", "dimensions": 0}, "'dimensions'"),
    ("/v1/embeddings", {"input": "a", "dimensions": 65}, "'dimensions'"),
    ("/v1/embeddings", {"input": "a", "dimensions": "8"}, "'dimensions' must be a whole"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "hex"}, "'encoding_format' must be"),
    ("/v1/embeddings", {"input": "a", "pooling": "mean"}, "'pooling' is not supported"),
    ("/v1/embeddings", {"input": "a " * 1100}, "'input[0]': input 0 has"),
    ("/api/embed", {"input": ["ok", ""]}, "'input[1]' is empty"),
    ("/api/embed", {"input": "a " * 1100, "truncate": False}, "'input[0]': input 0 has"),
    ("/api/embed", {"input": "a", "options": {"num_ctx": 8}},
     "'options.num_ctx' is not supported for embeddings"),
    ("/api/embeddings", {"prompt": 3}, "'prompt' must be non-empty text"),
    ("/v1/rerank", {"query": "q", "documents": "d"}, "'documents' must be a list"),
    ("/v1/rerank", {"query": "", "documents": ["d"]}, "'query' must be non-empty text"),
    ("/v1/rerank", {"query": "q", "documents": [{"title": "d"}]},
     "'documents[0]' must be text"),
    ("/v1/rerank", {"query": "q", "documents": ["d"], "top_n": 0}, "'top_n'"),
])
def test_bad_input_is_a_400_naming_the_field(running, path, body, message):
    r = httpx.post(f"{running.url}{path}", json={"model": MODEL, **body}, timeout=60)
    assert r.status_code == 400, r.text
    said = r.json().get("error")
    said = said["message"] if isinstance(said, dict) else said
    assert message in said


def test_a_long_input_is_cut_to_the_context_by_default(running, tiny_model):
    """Ollama's truncate (default true): the first context - 1 tokens and the end of text."""
    long = "word " * 1100
    r = httpx.post(f"{running.url}/api/embed", json={"model": MODEL, "input": long})
    assert r.status_code == 200, r.text
    ids = tiny_model.encode(long, raw=True)[:1023]
    assert r.json()["prompt_eval_count"] == 1024
    model = load(tiny_model.path, context=1024)
    from qwen_mlx.engine import embed

    rows = embed.embedding_rows(model, [ids])
    want = embed.gathered(model.pooling(rows), 1)[0]
    assert np.abs(np.array(r.json()["embeddings"][0]) - np.array(want)).max() < 1e-6


def test_requests_waiting_together_are_pooled_in_one_batch(model, tiny_model):
    """Embedding requests queued while the engine is busy run as one pooled batch (their
    rows sorted together), rerank and other dimensions in their own; each client gets its
    own vectors, equal to its request alone."""
    import asyncio
    import threading

    from qwen_mlx.serve import Server
    from qwen_mlx.engine.embed import embedding_rows

    from .serving import Running, poll

    server = Server(model, MODEL)
    calls, release = [], threading.Event()
    pooling = model.pooling

    def recorded(rows, **kwargs):
        calls.append((len(rows), kwargs))
        return pooling(rows, **kwargs)

    def hold():  # a compute job that keeps the engine busy until released
        release.wait(60)
        yield []

    running = Running(server)
    try:
        server.model.pooling = recorded
        held = threading.Thread(target=lambda: asyncio.run(server.worker.compute(hold)))
        held.start()
        poll(lambda: server.worker.computing is not None)
        bodies = [{"model": MODEL, "input": TEXTS[:2]}, {"model": MODEL, "input": TEXTS[2]},
                  {"model": MODEL, "input": "Hi", "dimensions": 16},
                  {"model": MODEL, "input": ["x", "y", "z"]}]
        answers = [None] * len(bodies)

        def send(i):
            answers[i] = httpx.post(f"{running.url}/v1/embeddings", json=bodies[i],
                                    timeout=120).json()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        poll(lambda: server.worker.jobs.qsize() == len(bodies))  # queued behind the hold
        release.set()
        for t in threads + [held]:
            t.join(120)
        assert sorted(calls, key=str) == sorted([(6, {"dimensions": None, "rerank": False}),
                                                 (1, {"dimensions": 16, "rerank": False})],
                                                key=str)
        for body, answer in zip(bodies, answers):
            texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
            alone = tiny_model.embed(texts, dimensions=body.get("dimensions"))
            got = np.array([d["embedding"] for d in answer["data"]])
            assert np.abs(got - alone).max() < 1e-4
            assert answer["usage"]["prompt_tokens"] == \
                sum(map(len, embedding_rows(tiny_model, texts)))
    finally:
        del server.model.pooling
        release.set()
        running.stop()
