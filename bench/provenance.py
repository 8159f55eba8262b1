"""What every results file records besides its numbers: versions, machine, when, and how.

Each script in bench/ writes ``{**header(method), ...}`` so that every figure in a README
can be traced to the script, the versions and the machine that produced it.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def header(script: str, method: str) -> dict:
    """``script``: the file that made the record; ``method``: how, in one sentence (runs,
    repetitions, alternation, medians or means)."""
    import mlx.core as mx
    import psutil

    return {"script": script, "method": method,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {"qwen-mlx": _version("qwen-mlx"), "mlx": mx.__version__,
                         "mlx-lm": _version("mlx-lm"), "numpy": _version("numpy"),
                         "python": sys.version.split()[0]},
            "machine": {"platform": platform.platform(), "processor": platform.processor()
                        or platform.machine(), "cores": os.cpu_count(),
                        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                        "device": str(mx.default_device())}}
