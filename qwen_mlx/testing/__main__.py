"""python -m qwen_mlx.testing OUT [--shape tiny|small|4b] [--seed N] [--outliers N]: write a
random checkpoint (--outliers: that many large input channels in the first layers)."""

import argparse

from .checkpoint import SHAPES, make_checkpoint

parser = argparse.ArgumentParser(prog="python -m qwen_mlx.testing", description=__doc__)
parser.add_argument("out")
parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--shard-gb", type=float, default=2.0)
parser.add_argument("--outliers", type=int, default=0)
args = parser.parse_args()
print(make_checkpoint(args.out, args.shape, seed=args.seed, shard_bytes=int(args.shard_gb * 2**30),
                      outliers=args.outliers))
