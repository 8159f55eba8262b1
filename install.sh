#!/bin/sh
# qwen-mlx in one command: ./install.sh [COMMAND ...]
#
# Makes a virtual environment (.venv beside this file, or $QWEN_MLX_VENV) with the newest
# Python 3.10+ it finds, installs qwen-mlx into it, then runs `qwen-mlx COMMAND ...` if one
# is given. A virtual environment is what Homebrew's Python requires (PEP 668), and macOS's
# own python3 is 3.9, too old: both are handled here, with a clear message when no Python
# is new enough. Run it again to update after a `git pull`.
set -eu

here=$(cd "${0%/*}" && pwd)
venv=${QWEN_MLX_VENV:-$here/.venv}

python=""
for candidate in python3.13 python3.12 python3.11 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [ -z "$python" ]; then
    echo "error: qwen-mlx needs Python 3.10 or newer (macOS's own python3 is 3.9): install" \
        "one with 'brew install python@3.12' or from python.org, then run $0 again" >&2
    exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv with $("$python" -c 'import sys; print(sys.executable, sys.version.split()[0])')" >&2
    "$python" -m venv "$venv"
fi
# On Linux MLX needs a backend: the CPU one unless QWEN_MLX_BACKEND says cuda (or cuda13).
extra=""
if [ "$(uname -s)" = Linux ]; then
    extra="[${QWEN_MLX_BACKEND:-cpu}]"
fi
echo "installing qwen-mlx$extra into $venv" >&2
# --no-compile: pip would byte-compile every file of every package (transformers alone has
# thousands); Python compiles what it imports, once, on first use (the install took 19 s
# instead of 32 s on the 2-core CI machine: bench/results/install_time.json)
"$venv/bin/python" -m pip install -q --no-compile --disable-pip-version-check "$here$extra"
echo "installed: $venv/bin/qwen-mlx" >&2

if [ "$#" -gt 0 ]; then
    exec "$venv/bin/qwen-mlx" "$@"
fi
