"""The MLX backend's one-time work, done at load rather than on the first token.

On the CPU backend (Linux), MLX's first compiled kernel checks for a C++ compiler with
``system("g++ --version")``, and ``system()`` sets SIGINT to ignored in the whole process
while its child runs: a Ctrl-C or a server's SIGINT that arrived during the first decode
was lost. Running one compiled kernel while the model loads moves that window to before
any handler of ours matters. The Metal backend compiles no C++ and needs none of this.
"""

from __future__ import annotations

import mlx.core as mx

_warm = False


def warm_up() -> None:
    """Run one tiny compiled kernel on the CPU backend, once per process (cheap: MLX keeps
    the built kernel on disk, so later processes only pay the probe)."""
    global _warm
    if _warm or mx.default_device().type != mx.cpu:
        return
    _warm = True
    mx.eval(mx.compile(lambda x: x * 2 + 1)(mx.zeros((1,), dtype=mx.float32)))
