"""One block file of the disk tier (:mod:`qwen_mlx.engine.kv_disk`): the KV of 256 positions
of a cache, every layer, as the cache stores them (full precision, or quantized triples).

A file is ``MAGIC``, a 4-byte header length, a JSON header (format, tier key, block key,
index, the block's token ids, each array's layer, part, type and shape, and the sha256 of
the arrays) and the arrays' bytes. A reader checks all of it before using any of it and
raises :class:`Corrupt` naming what failed; arrays come back as numpy views of the mapped
file, and a cache is assembled one array at a time (numpy joins the blocks, MLX copies
the result), so the process never holds every block's bytes at once.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import QuantizedKVCache

from .prompt_cache import PromptCache

MAGIC = b"QMLXKV\x00\x01"
FORMAT = 1
# How each cached dtype is stored: numpy has no bfloat16, so its bits go as uint16.
STORED = {"bfloat16": "<u2", "float16": "<f2", "float32": "<f4", "uint32": "<u4"}


class Corrupt(Exception):
    """A block file that must not be loaded (the message says why)."""


def parts(layer) -> tuple:
    """A layer's caches: itself, or the full-precision head and quantized tail of a
    prefix cache (:class:`~qwen_mlx.engine.prefix_kv.PrefixQuantizedKVCache`)."""
    return tuple(getattr(layer, "caches", None) or (layer,))


def arrays(part) -> list[mx.array]:
    """A part's keys then values: two arrays, or two (packed, scales, biases) triples."""
    flat = lambda x: list(x) if isinstance(x, tuple) else [x]
    return flat(part.keys) + flat(part.values)


def array_count(part) -> int:
    """Arrays a part holds (or will, while empty): two, or two triples when quantized."""
    return 6 if isinstance(part, QuantizedKVCache) else 2


@dataclass
class Snapshot:
    """What the writer needs of a cache the engine no longer uses: its tokens (whole
    blocks) and, per layer and part, the positions it holds and its arrays (bfloat16 seen
    as uint16, all evaluated: the writer thread only reads their memory)."""

    tokens: list[int]
    layers: list[list[tuple[int, list[mx.array], list[str]]]]


def snapshot(cache: PromptCache, n: int) -> Snapshot | None:
    """The first ``n`` tokens' worth of ``cache`` for the writer (on the engine thread);
    None for a type this format does not store."""
    layers = []
    for layer in cache.layers:
        held = []
        for part in parts(layer):
            found = arrays(part) if part.keys is not None else []
            names = [str(a.dtype).split(".")[-1] for a in found]
            if any(name not in STORED for name in names):
                return None
            held.append((part.offset, [a.view(mx.uint16) if a.dtype == mx.bfloat16 else a
                                       for a in found], names))
        layers.append(held)
    mx.eval([a for held in layers for _, found, _ in held for a in found])
    return Snapshot(list(cache.tokens[:n]), layers)


def expected_layout(cache: PromptCache) -> list[list[int]]:
    """Arrays per layer and part that a block for ``cache`` holds (or 0 where it holds
    none of a part's positions)."""
    return [[array_count(part) for part in parts(layer)] for layer in cache.layers]


def write(path: Path, tmp: Path, fields: dict, index: int, tokens: list[int],
          hosts: list, block: int) -> None:
    """Block ``index`` (positions ``index * block`` on) of a snapshot's host arrays
    (``hosts``: per layer and part, its positions and numpy views), written to ``tmp`` and
    renamed to ``path``; ``fields`` (tier and block keys) go into the header."""
    lo, hi = index * block, (index + 1) * block
    described, chunks, digest = [], [], hashlib.sha256()
    for i, held in enumerate(hosts):
        start = 0  # the first position this part holds
        for j, (offset, host, dtypes) in enumerate(held):
            a, b = max(lo, start) - start, min(hi, start + offset) - start
            start += offset
            if b <= a:
                continue
            for x, dtype in zip(host, dtypes):
                chunk = np.ascontiguousarray(x[..., a:b, :])
                described.append([i, j, dtype, list(chunk.shape)])
                chunks.append(chunk)
                digest.update(chunk.data)
    header = json.dumps({"format": FORMAT, **fields, "index": index, "tokens": tokens,
                         "arrays": described, "sha256": digest.hexdigest()}).encode()
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(header)) + header)
            for chunk in chunks:
                f.write(chunk.data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read(path: Path, fields: dict, tokens: list[int], expected: list[list[int]]) -> list:
    """A block's arrays, per layer and part, as (dtype, numpy view of the mapped file),
    after every check: the header's ``fields`` (tier and block keys) and ``tokens`` must be
    these, the layout ``expected``, the arrays' sha256 the header's."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < len(MAGIC) + 4:
            raise Corrupt("truncated")
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if data[:len(MAGIC)] != MAGIC:
        raise Corrupt("not a qwen-mlx KV block")
    (length,) = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4 + length
    try:
        header = json.loads(data[len(MAGIC) + 4:start])
        described = header["arrays"]
        if header["format"] != FORMAT or any(header[k] != v for k, v in fields.items()):
            raise Corrupt("made for another model, KV setting or block")
        if header["tokens"] != tokens:
            raise Corrupt("holds other tokens")
        nbytes = [int(np.prod(shape)) * np.dtype(STORED[dtype]).itemsize
                  for _, _, dtype, shape in described]
    except (ValueError, KeyError, TypeError) as e:
        raise Corrupt(f"unreadable header ({type(e).__name__})") from None
    if start + sum(nbytes) != size:
        raise Corrupt("truncated" if start + sum(nbytes) > size else "has extra bytes")
    if hashlib.sha256(memoryview(data)[start:]).hexdigest() != header.get("sha256"):
        raise Corrupt("checksum mismatch")
    out = [[[] for _ in held] for held in expected]
    offset = start
    for (layer, part, dtype, shape), count in zip(described, nbytes):
        stored = np.dtype(STORED[dtype])
        view = np.frombuffer(data, stored, count // stored.itemsize, offset).reshape(shape)
        if not (0 <= layer < len(out) and 0 <= part < len(out[layer])):
            raise Corrupt("has another layout")
        out[layer][part].append((dtype, view))
        offset += count
    for held, counts in zip(out, expected):
        if any(len(got) not in (0, n) for got, n in zip(held, counts)):
            raise Corrupt("has another layout")
    return out


def assemble(cache: PromptCache, blocks: list) -> None:
    """Set each layer's parts to the blocks' arrays joined along the positions."""
    for i, layer in enumerate(cache.layers):
        for j, part in enumerate(parts(layer)):
            pieces = [block[i][j] for block in blocks if block[i][j]]
            if not pieces:
                part.keys = part.values = None
                part.offset = 0
                continue
            joined = []
            for k, (dtype, _) in enumerate(pieces[0]):
                host = np.concatenate([p[k][1] for p in pieces], axis=2)
                joined.append(mx.array(host).view(getattr(mx, dtype)))
            half = len(joined) // 2
            if isinstance(part, QuantizedKVCache):
                part.keys, part.values = tuple(joined[:half]), tuple(joined[half:])
            else:
                part.keys, part.values = joined
            part.offset = joined[0].shape[2]
    mx.eval([arrays(p) for layer in cache.layers for p in parts(layer)
             if p.keys is not None])
