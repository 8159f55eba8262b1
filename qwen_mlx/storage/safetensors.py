"""Safetensors files read and written one tensor at a time.

mlx's own ``save_safetensors`` needs every tensor of a file in memory at once. A safetensors
header only needs names, dtypes and shapes, which a conversion knows before it computes
anything, so :class:`StreamingWriter` writes the header first and then each tensor as it is
produced: peak memory is one tensor, not one file.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Sequence, TypeVar

import mlx.core as mx
import numpy as np

from ..errors import QwenMlxError

DTYPE_NAMES = {mx.bfloat16: "BF16", mx.float16: "F16", mx.float32: "F32", mx.uint32: "U32",
               mx.int32: "I32", mx.uint8: "U8", mx.int8: "I8"}
DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "U8": 1, "I8": 1, "U32": 4, "I32": 4,
               "I64": 8, "BOOL": 1}


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is, from a safetensors header."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int = -1  # where its data starts in the file; -1 when not read from a file
    stored: str | None = None  # its name in the file, when ``name`` is another (a rename)

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.dtype, self.shape)


def save(path: Path | str, arrays: dict[str, mx.array], metadata: dict | None = None) -> None:
    """``mx.save_safetensors``, with a failed write raised as the OSError it is: MLX raises
    ``RuntimeError: [write] Unable to write N bytes``, naming neither the file nor why (a
    full disk, most often), and that reached users as an internal error."""
    try:
        mx.save_safetensors(str(path), arrays, metadata=metadata or {})
    except RuntimeError as e:
        if "[write]" not in str(e) and "open" not in str(e):
            raise
        try:
            full = shutil.disk_usage(Path(path).parent).free < 64 << 20
        except OSError:
            full = False
        code = errno.ENOSPC if full else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from None


def tensor_nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return DTYPE_BYTES.get(dtype, 4) * math.prod(shape)


T = TypeVar("T")


def plan_shards(items: Sequence[T], nbytes: Callable[[T], int], limit: int) -> list[list[T]]:
    """Split items, in order, into files of at most ``limit`` bytes (an item is never split)."""
    shards: list[list[T]] = [[]]
    size = 0
    for item in items:
        n = nbytes(item)
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += n
    return shards


def shard_name(index: int, count: int) -> str:
    """Hugging Face's file names: model.safetensors, or model-00001-of-00003.safetensors."""
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors" if count > 1 else \
        "model.safetensors"


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse one safetensors file's header and check that the file holds all its data."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise QwenMlxError(f"{path} is not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100 << 20):
                raise QwenMlxError(f"{path} is not a safetensors file (bad header length)")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QwenMlxError(f"cannot read {path}: {e}") from None
    metadata = header.pop("__metadata__", None) or {}
    tensors, end = {}, 0
    for name, spec in header.items():
        try:
            begin, stop = spec["data_offsets"]
            tensors[name] = TensorInfo(name, path, spec["dtype"], tuple(spec["shape"]),
                                       8 + n + int(begin))
        except (KeyError, TypeError, ValueError):
            raise QwenMlxError(f"{path}: malformed header entry for {name}") from None
        end = max(end, stop)
    if 8 + n + end > size:
        raise QwenMlxError(f"{path} is truncated: {size:,} bytes, its header promises "
                           f"{8 + n + end:,} (download or copy it again)")
    return tensors, metadata


def header_blob(entries: list[tuple[str, str, tuple[int, ...]]],
                metadata: dict[str, str] | None = None) -> bytes:
    """The JSON header a file of ``entries`` (name, dtype, shape, in order) starts with,
    padded so the data starts 8-byte aligned."""
    header: dict = {"__metadata__": metadata or {}}
    offset = 0
    for name, dtype, shape in entries:
        nbytes = tensor_nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    return blob + b" " * (-len(blob) % 8)


def file_nbytes(entries: list[tuple[str, str, tuple[int, ...]]],
                metadata: dict[str, str] | None = None) -> int:
    """The exact size of the file :class:`StreamingWriter` writes for ``entries``."""
    return 8 + len(header_blob(entries, metadata)) + sum(
        tensor_nbytes(d, shape) for _, d, shape in entries)


class StreamingWriter:
    """Write a safetensors file whose tensors arrive one at a time, in a declared order.

    ``entries`` lists (name, dtype, shape) in the order :meth:`write` will be called.
    """

    def __init__(self, path: Path, entries: list[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self._order = [(name, dtype, tuple(shape)) for name, dtype, shape in entries]
        blob = header_blob(entries, metadata)
        self._file: BinaryIO = open(path, "wb")
        self._file.write(struct.pack("<Q", len(blob)) + blob)
        self._next = 0

    def write(self, name: str, array: mx.array) -> None:
        want, dtype, shape = self._order[self._next]
        if name != want or DTYPE_NAMES.get(array.dtype) != dtype or tuple(array.shape) != shape:
            raise AssertionError(f"expected {want} {dtype} {shape}, got {name} "
                                 f"{array.dtype} {tuple(array.shape)}")
        if array.dtype == mx.bfloat16:  # numpy has no bfloat16; the bits are what we store
            array = array.view(mx.uint16)
        try:
            self._file.write(np.ascontiguousarray(np.asarray(array)).data)
        except OSError as e:  # a full disk: say which file was being written
            raise type(e)(e.errno, e.strerror, self._file.name) from None
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._order):
            self._file.close()
            raise AssertionError(f"{len(self._order) - self._next} tensors were not written")
        self._file.flush()
        self._file.close()

    def __enter__(self) -> "StreamingWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()
