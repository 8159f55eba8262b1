"""python -m qwen_mlx.testing OUT [--shape tiny|small|0.6b|4b] [--seed N] [--outliers N]
[--embed-std S] [--embedding]: write a random checkpoint (--outliers: that many large input
channels in the first layers; --embed-std: the embedding's standard deviation, 1 by default;
--embedding: a Qwen3-Embedding one, Qwen3Model without an output layer)."""

import argparse

from .checkpoint import SHAPES, make_checkpoint, make_embedding_checkpoint

parser = argparse.ArgumentParser(prog="python -m qwen_mlx.testing", description=__doc__)
parser.add_argument("out")
parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--shard-gb", type=float, default=2.0)
parser.add_argument("--outliers", type=int, default=0)
parser.add_argument("--embed-std", type=float, default=1.0)
parser.add_argument("--embedding", action="store_true")
args = parser.parse_args()
if args.embedding:
    print(make_embedding_checkpoint(args.out, args.shape, seed=args.seed))
    raise SystemExit(0)
print(make_checkpoint(args.out, args.shape, seed=args.seed, shard_bytes=int(args.shard_gb * 2**30),
                      outliers=args.outliers, embed_std=args.embed_std))
