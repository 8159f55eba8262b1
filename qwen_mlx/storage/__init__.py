"""Files that are written safely: outputs that appear whole or not at all (atomic), what a
stopped run left behind (leftovers), safetensors read and written a tensor at a time, and
qwen-mlx's own folder. Imports nothing of ours but errors: every other layer builds on it."""
