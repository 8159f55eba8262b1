"""Our embeddings and rerank scores against Qwen's reference implementations, and our
embedding speed against sentence-transformers', side by side on this machine.

    python bench/embed_reference.py [--shape 0.6b] [--venv .venv-embed-reference]
                                    [--texts 16] [--tokens 128] [--reps 3]
                                    [--out bench/results/embed_reference.json]

The references need torch, too heavy for the test extra, so they run in a virtual
environment of their own (``--venv``, made with torch, sentence-transformers and
transformers when it is missing) through ``bench/embed_reference_torch.py``. Random
checkpoints of ``--shape`` (Qwen3-Embedding-0.6B's by default) are built here, as the
models' repositories lay them out, and converted by `qwen-mlx convert` without quantizing,
in float32:

* embeddings: ``SentenceTransformer(folder)`` (the repository's modules.json: last-token
  pooling and normalize; float32, CPU) on documents, queries with its ``query`` prompt,
  and documents at ``dimensions``, against ``Model.embed``: cosine per vector (goal
  >= 0.9999);
* rerank scores: the transformers recipe in Qwen3-Reranker's model card against
  ``Model.rerank``: largest absolute difference (goal <= 1e-4);
* speed: ``--texts`` texts of about ``--tokens`` tokens each, embedded as one call by each
  side (sentence-transformers' ``encode`` with the whole list as its batch, ``Model.embed``),
  model loads excluded, ``--reps`` alternated runs after a warm-up; the medians of tokens/s
  and their ratio (goal >= 1.0x). ``--speed-from FILE`` keeps the speed figures of an
  earlier results file instead (they take most of the run on a CPU).
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qwen_mlx import load
from qwen_mlx.models.recipes import Recipe
from qwen_mlx.quant.convert import convert
from qwen_mlx.testing import make_checkpoint, make_embedding_checkpoint

from checkpoints import RESULTS  # noqa: E402 - bench/ is run as a script folder
from provenance import header  # noqa: E402

HERE = Path(__file__).resolve().parent
REFERENCE = ["torch", "sentence-transformers==6.3.0", "transformers==5.25.0"]
TASK = "Given a web search query, retrieve relevant passages that answer the query"
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to "
    "physical objects and is responsible for the movement of planets around the sun.",
    "Paris is the capital and largest city of France, on the Seine.",
    "A recipe for bread: flour, water, salt and yeast, kneaded, proofed and baked.",
    "MLX is an array framework for machine learning on Apple silicon.",
]
QUERIES = ["What is the capital of China?", "Explain gravity", "How is bread made?"]
WORDS = ("river stone light garden window paper music morning silver forest road ocean "
         "memory letter bridge winter candle story harbor mountain").split()


def reference_python(venv: Path) -> Path:
    """The reference environment's interpreter, made when it is missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REFERENCE], check=True)
    return python


def ask(python: Path, job: dict) -> dict:
    done = subprocess.run([str(python), str(HERE / "embed_reference_torch.py")],
                          input=json.dumps(job), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the reference failed on {job['kind']}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def cosines(ours, theirs) -> list[float]:
    import numpy as np

    a, b = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    return (np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) *
                                     np.linalg.norm(b, axis=1))).tolist()


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="0.6b", help="random checkpoint shape: tiny, small, 0.6b")
    ap.add_argument("--venv", type=Path, default=HERE.parent / ".venv-embed-reference")
    ap.add_argument("--texts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "embed_reference.json")
    ap.add_argument("--speed-from", type=Path, help="an earlier results file of the same "
                    "shape whose speed figures to keep instead of measuring again")
    a = ap.parse_args()
    python = reference_python(a.venv)
    work = Path(tempfile.mkdtemp(prefix="qwen-mlx-embed-reference-"))
    flat = Recipe(bits=None, dtype="float32")
    embedding_hf = make_embedding_checkpoint(work / "embedding-hf", a.shape)
    convert(embedding_hf, work / "embedding", flat)
    # logits spread like a trained model's (embedding std 0.2): with unit variance a random
    # reranker's scores all saturate at 0 or 1, where any two computations agree
    reranker_hf = make_checkpoint(work / "reranker-hf", a.shape, seed=1, embed_std=0.2)
    convert(reranker_hf, work / "reranker", flat)

    embedder = load(work / "embedding")
    dimensions = min(128, embedder.config["hidden_size"] // 2)
    theirs = ask(python, {"kind": "embed", "folder": str(embedding_hf), "documents": DOCUMENTS,
                          "queries": QUERIES, "dimensions": dimensions})
    ours = {"documents": embedder.embed(DOCUMENTS), "queries": embedder.embed(
        QUERIES, instruction=TASK), "truncated": embedder.embed(DOCUMENTS,
                                                                 dimensions=dimensions)}
    embedding = {kind: min(cosines(ours[kind], theirs[kind])) for kind in ours}

    reranker = load(work / "reranker")
    query = QUERIES[0]
    reference_scores = ask(python, {"kind": "rerank", "folder": str(reranker_hf),
                                    "query": query, "documents": DOCUMENTS})["scores"]
    our_scores = dict(reranker.rerank(query, DOCUMENTS))
    rerank_diff = max(abs(our_scores[i] - s) for i, s in enumerate(reference_scores))
    del reranker

    if a.speed_from is not None:
        earlier = json.loads(a.speed_from.read_text())
        if earlier["settings"]["shape"] != a.shape:
            raise SystemExit(f"{a.speed_from} measured the {earlier['settings']['shape']} shape")
        settings = earlier.get("speed_settings") or {
            k: earlier["settings"][k] for k in ("texts", "tokens", "reps")}
        speed = {**earlier, "speed_settings": settings, "speed_method": (
            f"{settings['texts']} texts x ~{settings['tokens']} tokens in one call per side, "
            f"{settings['reps']} alternated runs after a warm-up, medians; measured "
            f"{earlier['created']} by {a.speed_from.name}")}
        write(a, embedding, rerank_diff, our_scores, reference_scores, dimensions, speed)
        return
    rng = random.Random(0)
    texts = []
    for _ in range(a.texts):  # about --tokens tokens each (cut to exactly that many)
        ids = embedder.encode(" ".join(rng.choice(WORDS) for _ in range(a.tokens)), raw=True)
        texts.append(embedder.decode(ids[:a.tokens - 1]))
    embedder.embed(texts[:2])  # warm up
    runs: dict[str, list[dict]] = {"qwen-mlx": [], "sentence-transformers": []}
    job = {"kind": "speed", "folder": str(embedding_hf), "texts": texts,
           "batch_size": len(texts)}
    from qwen_mlx.engine.embed import embedding_rows

    our_tokens = sum(map(len, embedding_rows(embedder, texts)))
    for rep in range(a.reps):
        for side in (("qwen-mlx", "sentence-transformers") if rep % 2 == 0 else
                     ("sentence-transformers", "qwen-mlx")):
            if side == "qwen-mlx":
                start = time.perf_counter()
                embedder.embed(texts)
                runs[side].append({"seconds": time.perf_counter() - start,
                                   "tokens": our_tokens})
            else:
                runs[side].append(ask(python, job))
            print(side, rep, round(runs[side][-1]["tokens"] / runs[side][-1]["seconds"], 1),
                  "tokens/s", flush=True)
    rates = {side: statistics.median(r["tokens"] / r["seconds"] for r in rs)
             for side, rs in runs.items()}
    speed = {"speed_method": f"{a.texts} texts x ~{a.tokens} tokens in one call per side, "
                             f"{a.reps} alternated runs after a warm-up, medians",
             "speed_settings": {"texts": a.texts, "tokens": a.tokens, "reps": a.reps},
             "reference_versions": runs["sentence-transformers"][0]["versions"],
             "reference_threads": runs["sentence-transformers"][0]["threads"],
             "tokens_per_second": rates, "runs": runs,
             "ours_over_sentence_transformers": rates["qwen-mlx"] /
             rates["sentence-transformers"]}
    write(a, embedding, rerank_diff, our_scores, reference_scores, dimensions, speed)


def write(a, embedding: dict, rerank_diff: float, our_scores: dict, reference_scores: list,
          dimensions: int, speed: dict) -> None:
    """The results file: the agreement measured now, the speed figures (measured now or
    kept from an earlier file, as ``speed`` says)."""
    keys = ("speed_method", "speed_settings", "reference_versions", "reference_threads",
            "tokens_per_second", "runs", "ours_over_sentence_transformers")
    speed = {k: speed[k] for k in keys}
    rates = speed["tokens_per_second"]
    record = {**header("bench/embed_reference.py",
                       f"random {a.shape}-shape checkpoints (Qwen3-Embedding and Qwen3-Reranker "
                       f"layouts; the reranker's embedding std 0.2), float32, CPU; references "
                       f"in their own venv; speed: {speed['speed_method']}"),
              **speed, "settings": {"shape": a.shape, "dimensions": dimensions},
              "embedding_min_cosine": embedding, "rerank_max_abs_difference": rerank_diff,
              "rerank_scores": {"ours": [our_scores[i] for i in range(len(DOCUMENTS))],
                                "reference": reference_scores},
              "goals_met": {"cosine": min(embedding.values()) >= 0.9999,
                            "rerank": rerank_diff <= 1e-4,
                            "speed": rates["qwen-mlx"] >= rates["sentence-transformers"]}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("embedding_min_cosine", "rerank_max_abs_difference",
                                             "tokens_per_second", "goals_met")}, indent=2))


if __name__ == "__main__":
    main()
