"""`qwen-mlx bench`: tokens/s, time to first token and peak memory measured through the one
engine, and the plot of a sweep. Imports the public API (qwen_mlx.load) and everything below."""
