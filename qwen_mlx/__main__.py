"""python -m qwen_mlx: the same as the qwen-mlx command."""

from .cli import main

main(prog_name="qwen-mlx")
