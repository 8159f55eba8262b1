"""Sizes as people write them, in one convention for every option (`--memory`,
`--max-size`, `--max-body`, ...): GB, MB, kB are decimal (10^9, 10^6, 10^3 bytes, as disk
sizes, model cards and Finder count them); GiB, MiB, KiB are binary (2^30, ...). A Mac sold
as "16 GB" has 16 GiB of memory: `--memory 16GiB` says exactly that, `--memory 16GB` is 7%
less, which only makes a plan more careful."""

from __future__ import annotations

import re

from .errors import QwenMlxError

GIB = 1 << 30
UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
         "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20,
         "gib": 1 << 30, "tib": 1 << 40}


def parse_size(text: str, what: str = "a size") -> int:
    """'1.8GB' -> 1,800,000,000; '16GiB' -> 17,179,869,184; '512' -> 512 (bytes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in UNITS:
        raise QwenMlxError(f"cannot read {text!r} as {what} (try 1.8GB, 16GiB or 800MB)")
    return int(float(m.group(1)) * UNITS[m.group(2)])
