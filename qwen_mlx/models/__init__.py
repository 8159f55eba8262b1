"""What a model's files are: the architecture's numbers (shapes), a checkpoint's tensors and
config, recipes and the sizes they give, provenance and model card, and loading into mlx-lm's
Qwen3 (with the one seam that knows mlx-lm's internals). Imports storage, errors and units."""
