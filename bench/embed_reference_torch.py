"""The reference side of bench/embed_reference.py, run by it in a virtual environment of its
own (torch, sentence-transformers, transformers): reads one job as JSON on stdin, writes the
answer as JSON on stdout. Nothing here imports qwen-mlx or MLX.

* ``embed``: ``SentenceTransformer(folder)`` as Qwen3-Embedding's card loads it (its
  modules.json: last-token pooling, normalize), float32 on the CPU; documents as they are,
  queries with the ``query`` prompt, and the documents at ``dimensions`` (``truncate_dim``).
* ``rerank``: Qwen3-Reranker's card recipe with transformers, verbatim in its steps: the
  prefix and suffix tokenized alone, the pair between them, left padding, the last
  position's logits for "yes" and "no", log-softmax, exp.
* ``speed``: ``encode`` of the given token rows' texts, timed after a warm-up.
"""

from __future__ import annotations

import json
import sys
import time

import torch

PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the "
          "Query and the Instruct provided. Note that the answer can only be \"yes\" or "
          "\"no\".<|im_end|>\n<|im_start|>user\n")
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
TASK = "Given a web search query, retrieve relevant passages that answer the query"


def sentence_transformer(folder: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(folder, device="cpu",
                               model_kwargs={"torch_dtype": torch.float32})


def embed(job: dict) -> dict:
    model = sentence_transformer(job["folder"])
    documents = model.encode(job["documents"], batch_size=len(job["documents"]))
    queries = model.encode(job["queries"], prompt_name="query", batch_size=len(job["queries"]))
    short = model.encode(job["documents"], truncate_dim=job["dimensions"])
    return {"documents": documents.tolist(), "queries": queries.tolist(),
            "truncated": short.tolist()}


def rerank(job: dict) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(job["folder"], padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(job["folder"],
                                                 torch_dtype=torch.float32).eval()
    no, yes = tokenizer.convert_tokens_to_ids("no"), tokenizer.convert_tokens_to_ids("yes")
    prefix = tokenizer.encode(PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(SUFFIX, add_special_tokens=False)
    pairs = [f"<Instruct>: {TASK}\n<Query>: {job['query']}\n<Document>: {doc}"
             for doc in job["documents"]]
    inputs = tokenizer(pairs, padding=False, truncation="longest_first",
                       return_attention_mask=False,
                       max_length=8192 - len(prefix) - len(suffix))
    for i, ids in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix + ids + suffix
    inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=8192)
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1, :]
        pair = torch.stack([logits[:, no], logits[:, yes]], dim=1)
        scores = torch.nn.functional.log_softmax(pair, dim=1)[:, 1].exp()
    return {"scores": scores.tolist()}


def speed(job: dict) -> dict:
    model = sentence_transformer(job["folder"])
    texts = job["texts"]
    model.encode(texts[:2], batch_size=2)  # warm up
    start = time.perf_counter()
    model.encode(texts, batch_size=job["batch_size"])
    seconds = time.perf_counter() - start
    tokens = sum(len(model.tokenize([t])["input_ids"][0]) for t in texts)
    return {"seconds": seconds, "tokens": tokens, "threads": torch.get_num_threads(),
            "versions": versions()}


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "sentence-transformers", "transformers")}


if __name__ == "__main__":
    job = json.load(sys.stdin)
    answer = {"embed": embed, "rerank": rerank, "speed": speed}[job["kind"]](job)
    json.dump(answer, sys.stdout)
