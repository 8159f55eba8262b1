"""A disk tier for prompt caches: the KV of a long prompt outlives the process.

Agents resend the same 10-30k-token head (system prompt, tool definitions) on every call,
and a user asks several questions about one document; the server's memory pool and a chat's
cache keep that KV only while the process runs and has room. Here the KV of each 256-token
block of a cache is one file, named by a chained hash of every token up to the block's end
(as vLLM's prefix caching names its blocks): a prompt whose first N blocks equal a stored
cache's loads those N blocks and prefills only the rest, however its later tokens differ.

The chain starts from the tier key: the model's files (weights, config with rope/YaRN,
tokenizer, adapter), its compute type, the KV spec and the chat template, so a cache is never
read by a model it does not belong to; each tier has a folder of its own under the root, and
the root's size cap counts every tier's files (the least recently used are dropped first).

Nothing lost, nothing wrong: the engine only hands over caches it no longer uses (evicted,
at shutdown, at the end of a `generate`), and a background thread writes them under a
temporary name and renames, so the engine step never waits for the disk. A file is checked
(magic, a header naming this block and its tokens, the sha256 of its arrays) before any of it
is used; one that fails is deleted with one line and its blocks are recomputed. A full disk
turns writing off with one line; reading goes on.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import json
import logging
import mmap
import os
import queue
import struct
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import QuantizedKVCache

from ..models import provenance
from ..storage import leftovers
from .prompt_cache import PromptCache, common_prefix

BLOCK = 256  # tokens per file: a prompt shares a stored head in whole blocks
MIN_TOKENS = 4 * BLOCK  # shorter caches are quick to prefill again: not written
DEFAULT_SIZE = 32 * 10**9  # the root's cap, every tier together
MAGIC = b"QMLXKV\x00\x01"
FORMAT = 1
SUFFIX = ".kv"
# Caches queued for the writer beside the one it writes; a save past that is skipped (and
# counted). A handed-over cache keeps its memory until it is written, so this bounds what
# the tier holds beyond the memory plan's budget: two caches.
PENDING = 1
# How each cached dtype is stored: numpy has no bfloat16, so its bits go as uint16.
STORED = {"bfloat16": "<u2", "float16": "<f2", "float32": "<f4", "uint32": "<u4"}

log = logging.getLogger("qwen_mlx")
_open: "weakref.WeakSet[KVDisk]" = weakref.WeakSet()


def tier_key(facts: dict) -> str:
    """The hex key of everything that changes a cache's numbers (see the module's doc)."""
    text = json.dumps({"format": FORMAT, **facts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def model_key(model) -> str:
    """The tier key of a loaded :class:`~qwen_mlx.model.Model`: its files (names, sizes,
    modification times: a changed weight or tokenizer file is another model), its adapter's,
    its config as loaded (rope and YaRN), its compute type, KV spec and chat template."""
    adapter = Path(model.adapter) if model.adapter is not None else None
    adapter_files = sorted(adapter.glob("*")) if adapter is not None and adapter.is_dir() \
        else []
    kv = model.kv
    template = getattr(model.tokenizer, "chat_template", None)
    return tier_key({
        "files": provenance.fingerprint(model.path),
        "adapter": [[f.name, f.stat().st_size, f.stat().st_mtime_ns]
                    for f in adapter_files if f.is_file()],
        "config": model.config, "dtype": model.compute_dtype,
        "kv": [kv.bits, kv.group_size, kv.start],
        "template": hashlib.sha256(json.dumps(template, default=str).encode()).hexdigest()})


def block_keys(tier: str, tokens: Sequence[int]) -> list[str]:
    """One key per whole block of ``tokens``: each hashes the one before it and its block's
    ids, so equal keys mean equal heads."""
    keys, previous = [], bytes.fromhex(tier)
    for start in range(0, len(tokens) - BLOCK + 1, BLOCK):
        h = hashlib.sha256(previous)
        h.update(np.asarray(tokens[start:start + BLOCK], dtype="<i4").tobytes())
        previous = h.digest()
        keys.append(h.hexdigest())
    return keys


def _parts(layer) -> tuple:
    """A layer's caches: itself, or the full-precision head and quantized tail of a
    prefix cache (:class:`~qwen_mlx.engine.kv_cache.PrefixQuantizedKVCache`)."""
    return tuple(getattr(layer, "caches", None) or (layer,))


def _arrays(part) -> list[mx.array]:
    """A part's keys then values: two arrays, or two (packed, scales, biases) triples."""
    flat = lambda x: list(x) if isinstance(x, tuple) else [x]
    return flat(part.keys) + flat(part.values)


@dataclass
class _Snapshot:
    """What the writer needs of a cache the engine no longer uses: its tokens (whole
    blocks) and, per layer and part, the positions it holds and its arrays (bfloat16 seen
    as uint16, all evaluated: the writer thread only reads their memory)."""

    tokens: list[int]
    layers: list[list[tuple[int, list[mx.array], list[str]]]]


class Corrupt(Exception):
    """A block file that must not be loaded (the message says why)."""


class KVDisk:
    """One model's tier (its key) under ``root``, holding at most ``cap`` bytes of files
    with every other tier there. Thread-safe: the engine thread loads and hands over caches,
    the tier's own thread writes."""

    def __init__(self, root: Path, key: str, cap: int = DEFAULT_SIZE) -> None:
        self.root, self.key, self.cap = Path(root), key, cap
        self.folder = self.root / key[:32]
        self.off: str | None = None  # why writing stopped, once it has
        self.loaded = self.written = self.skipped = self.dropped = 0  # blocks; saves skipped
        self._queue: queue.Queue = queue.Queue(maxsize=PENDING)
        self._thread: threading.Thread | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            leftovers.clean_folder(self.folder)
        except OSError as e:
            self._stop_writing(f"cannot use {self.folder}: {e.strerror or e}")
        _open.add(self)

    # -- reading (the engine thread) ----------------------------------------------------

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def stored(self, prompt: Sequence[int]) -> int:
        """Tokens at the head of ``prompt`` whose blocks are all on disk (at least its last
        token is left to compute: generation needs its logits)."""
        usable = (len(prompt) - 1) // BLOCK * BLOCK
        n = 0
        for key in block_keys(self.key, prompt[:usable]):
            if not self.path(key).is_file():
                break
            n += BLOCK
        return n

    def fill(self, cache: PromptCache, prompt: Sequence[int], have: int | None = None) -> int:
        """Load into ``cache`` (replacing what it holds) the longest stored head of
        ``prompt``, when that is longer than ``have`` (default: what the cache already
        shares with the prompt). Returns the tokens loaded, 0 for none; a block that fails
        its checks is deleted, and the blocks before it are used."""
        prompt = list(prompt)
        have = common_prefix(cache.tokens, prompt) if have is None else have
        n = self.stored(prompt)
        if n <= have:
            return 0
        expected = [[len(_arrays(part)) if part.keys is not None else _fresh_count(part)
                     for part in _parts(layer)] for layer in cache.layers]
        blocks = []
        for i, key in enumerate(block_keys(self.key, prompt[:n])):
            try:
                blocks.append(self._read(key, prompt[i * BLOCK:(i + 1) * BLOCK], expected))
            except Corrupt as e:
                self._drop(self.path(key), str(e))
                break
            except FileNotFoundError:  # evicted meanwhile (by another server on the folder)
                break
        n = len(blocks) * BLOCK
        if n <= have:
            return 0
        self._assemble(cache, blocks)
        cache.tokens, cache.from_disk = prompt[:n], n
        self.loaded += len(blocks)
        for key in block_keys(self.key, prompt[:n]):  # recently used: dropped last
            _touch(self.path(key))
        return n

    def _read(self, key: str, tokens: list[int], expected: list[list[int]]) -> list:
        """A block's arrays as numpy views of the mapped file, per layer and part, after
        every check."""
        path = self.path(key)
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
            arrays = header["arrays"]
            if (header["format"], header["tier"], header["block"]) != (FORMAT, self.key, key):
                raise Corrupt("made for another model, KV setting or block")
            if header["tokens"] != tokens:
                raise Corrupt("holds other tokens")
            nbytes = [int(np.prod(shape)) * np.dtype(STORED[dtype]).itemsize
                      for _, _, dtype, shape in arrays]
        except (ValueError, KeyError, TypeError) as e:
            raise Corrupt(f"unreadable header ({type(e).__name__})") from None
        if start + sum(nbytes) != size:
            raise Corrupt("truncated" if start + sum(nbytes) > size else "has extra bytes")
        if hashlib.sha256(memoryview(data)[start:]).hexdigest() != header.get("sha256"):
            raise Corrupt("checksum mismatch")
        out = [[[] for _ in parts] for parts in expected]
        offset = start
        for (layer, part, dtype, shape), count in zip(arrays, nbytes):
            view = np.frombuffer(data, STORED[dtype], count // np.dtype(STORED[dtype]).itemsize,
                                 offset).reshape(shape)
            try:
                out[layer][part].append((dtype, view))
            except (IndexError, TypeError):
                raise Corrupt("has another layout") from None
            offset += count
        for parts, counts in zip(out, expected):
            if any(len(got) not in (0, n) for got, n in zip(parts, counts)):
                raise Corrupt("has another layout")
        return out

    def _assemble(self, cache: PromptCache, blocks: list) -> None:
        """Set each layer's parts to the blocks' arrays joined along the positions."""
        for i, layer in enumerate(cache.layers):
            for j, part in enumerate(_parts(layer)):
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
        mx.eval([_arrays(p) for layer in cache.layers for p in _parts(layer)
                 if p.keys is not None])

    def _drop(self, path: Path, why: str) -> None:
        log.warning("KV on disk: deleted %s: %s; its tokens are computed again", path.name,
                    why)
        try:
            path.unlink()
        except OSError:
            pass
        self.dropped += 1

    # -- writing (handed over by the engine thread, written by the tier's) ---------------

    def save(self, cache: PromptCache, block: bool = False) -> bool:
        """Hand over a cache the caller no longer uses (its arrays must not change): its
        whole blocks are written in the background. A cache under MIN_TOKENS is not
        written, nor one that finds the writer busy with PENDING others (unless ``block``:
        then it waits for room). Returns whether it was queued."""
        n = min(len(cache.tokens), cache.offset) // BLOCK * BLOCK
        if self.off is not None or n < MIN_TOKENS:
            return False
        layers = []
        for layer in cache.layers:
            parts = []
            for part in _parts(layer):
                arrays = _arrays(part) if part.keys is not None else []
                if any(str(a.dtype).split(".")[-1] not in STORED for a in arrays):
                    return False  # a type this format does not store
                parts.append((part.offset, [a.view(mx.uint16) if a.dtype == mx.bfloat16
                                            else a for a in arrays],
                              [str(a.dtype).split(".")[-1] for a in arrays]))
            layers.append(parts)
        mx.eval([a for parts in layers for _, arrays, _ in parts for a in arrays])
        snapshot = _Snapshot(list(cache.tokens[:n]), layers)
        self._start()
        try:
            self._queue.put(snapshot, block=block)
        except queue.Full:
            self.skipped += 1
            return False
        return True

    def flush(self) -> None:
        """Wait until every handed-over cache is written."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Write what is pending, then stop the writer."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._thread = None

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer, name="qwen-mlx-kv-disk",
                                            daemon=True)
            self._thread.start()

    def _writer(self) -> None:
        while True:
            snapshot = self._queue.get()
            try:
                if snapshot is None:
                    return
                if self.off is None:
                    self._write(snapshot)
            except Exception as e:  # noqa: BLE001 - the tier stops; serving goes on
                self._stop_writing(f"{type(e).__name__}: {e}".splitlines()[0])
            finally:
                self._queue.task_done()

    def _write(self, snapshot: _Snapshot) -> None:
        hosts = [[(offset, [np.asarray(a) for a in arrays], dtypes)
                  for offset, arrays, dtypes in parts] for parts in snapshot.layers]
        keys = block_keys(self.key, snapshot.tokens)
        for i, key in enumerate(keys):
            path = self.path(key)
            if path.is_file():
                _touch(path)
                continue
            try:
                self._write_block(path, key, i, snapshot.tokens[i * BLOCK:(i + 1) * BLOCK],
                                  hosts)
            except OSError as e:
                full = e.errno in (errno.ENOSPC, errno.EDQUOT)
                self._stop_writing("the disk is full" if full else
                                   f"cannot write {path}: {e.strerror or e}")
                return
            self.written += 1
        self._keep_under_cap()

    def _write_block(self, path: Path, key: str, index: int, tokens: list[int],
                     hosts: list) -> None:
        lo, hi = index * BLOCK, (index + 1) * BLOCK
        arrays, chunks, digest = [], [], hashlib.sha256()
        for i, parts in enumerate(hosts):
            start = 0  # the first position this part holds
            for j, (offset, host, dtypes) in enumerate(parts):
                a, b = max(lo, start) - start, min(hi, start + offset) - start
                start += offset
                if b <= a:
                    continue
                for x, dtype in zip(host, dtypes):
                    chunk = np.ascontiguousarray(x[..., a:b, :])
                    arrays.append([i, j, dtype, list(chunk.shape)])
                    chunks.append(chunk)
                    digest.update(chunk.data)
        header = json.dumps({"format": FORMAT, "tier": self.key, "block": key,
                             "index": index, "tokens": tokens, "arrays": arrays,
                             "sha256": digest.hexdigest()}).encode()
        tmp = leftovers.temp_file(path)
        try:
            with open(tmp, "wb") as f:
                f.write(MAGIC + struct.pack("<I", len(header)) + header)
                for chunk in chunks:
                    f.write(chunk.data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _keep_under_cap(self) -> None:
        """Drop the least recently used block files under the root (every tier's) until
        they hold at most ``cap`` bytes."""
        files = []
        for path in self.root.glob(f"*/*{SUFFIX}"):
            try:
                st = path.stat()
            except OSError:
                continue  # dropped meanwhile by another process
            files.append((st.st_mtime_ns, st.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.cap:
                break
            try:
                path.unlink()
            except OSError:
                pass
            total -= size

    def _stop_writing(self, why: str) -> None:
        if self.off is None:
            self.off = why
            log.warning("KV on disk: writing stopped: %s (%s); serving goes on", why,
                        self.folder)


def _fresh_count(part) -> int:
    """Arrays an empty part would hold: two, or two triples when quantized."""
    return 6 if isinstance(part, QuantizedKVCache) else 2


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


@atexit.register
def finish_writes() -> None:
    """Write every cache handed over, in every tier (a server's shutdown; at a clean exit,
    before the process ends)."""
    for disk in list(_open):
        disk.close()
