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
import os
import queue
import re
import shutil
import threading
import time
import weakref
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import kv_blocks
from ..models import provenance
from ..storage import leftovers
from .prompt_cache import PromptCache, common_prefix

BLOCK = 256  # tokens per file: a prompt shares a stored head in whole blocks
MIN_TOKENS = 4 * BLOCK  # shorter caches are quick to prefill again: not written
# The root's cap, every tier together, unless one is given: 32 GB, or a tenth of the room
# its volume has free when the tier opens, if that is less (a Mac's small SSD stays usable).
DEFAULT_SIZE = 32 * 10**9
FREE_SHARE = 0.1
SUFFIX = ".kv"
OURS = re.compile(r"[0-9a-f]{64}\.kv")  # a block file's name
TIER = re.compile(r"[0-9a-f]{32}")  # a tier folder's
# Caches queued for the writer beside the one it writes; a save past that is skipped (and
# counted). A handed-over cache keeps its memory until it is written, so this bounds what
# the tier holds beyond the memory plan's budget: two caches.
PENDING = 1

log = logging.getLogger("qwen_mlx")
_open: "weakref.WeakSet[KVDisk]" = weakref.WeakSet()


def tier_key(facts: dict) -> str:
    """The hex key of everything that changes a cache's numbers (see the module's doc)."""
    text = json.dumps({"format": kv_blocks.FORMAT, **facts}, sort_keys=True, default=str)
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


def default_cap(folder: Path) -> int:
    """DEFAULT_SIZE, or FREE_SHARE of the free room on ``folder``'s volume if less."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return DEFAULT_SIZE
    return min(DEFAULT_SIZE, int(free * FREE_SHARE))


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


class KVDisk:
    """One model's tier (its key) under ``root``, holding at most ``cap`` bytes of files
    with every other tier there. Thread-safe: the engine thread loads and hands over caches,
    the tier's own thread writes."""

    def __init__(self, root: Path, key: str, cap: int | None = None) -> None:
        self.root, self.key = Path(root), key
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
        self.cap = cap if cap is not None else default_cap(self.root)
        _open.add(self)

    @property
    def counts(self) -> dict:
        """What this tier did since it opened (the server's /health shows it)."""
        return {"blocks_loaded": self.loaded, "blocks_written": self.written,
                "blocks_deleted": self.dropped, "saves_skipped": self.skipped,
                "writing": self.off is None}

    # -- reading (the engine thread) ----------------------------------------------------

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def head(self, prompt: Sequence[int], have: int = 0) -> list[str]:
        """The keys of the blocks at the head of ``prompt`` that are all on disk, when they
        hold more than ``have`` tokens (else none). At least the prompt's last token is
        left to compute: generation needs its logits."""
        usable = (len(prompt) - 1) // BLOCK * BLOCK
        if have >= usable:
            return []  # memory holds every block the disk could (no hashing, no lookups)
        keys = []
        for key in block_keys(self.key, prompt[:usable]):
            if not self.path(key).is_file():
                break
            keys.append(key)
        return keys if len(keys) * BLOCK > have else []

    def fill(self, cache: PromptCache, prompt: Sequence[int], have: int | None = None) -> int:
        """Load into ``cache`` (replacing what it holds) the longest stored head of
        ``prompt``, when that is longer than ``have`` (default: what the cache already
        shares with the prompt). Returns the tokens loaded, 0 for none."""
        prompt = list(prompt)
        have = common_prefix(cache.tokens, prompt) if have is None else have
        return self.load(cache, prompt, self.head(prompt, have), have)

    def load(self, cache: PromptCache, prompt: Sequence[int], keys: list[str],
             have: int = 0) -> int:
        """Load the blocks ``keys`` (from :meth:`head`) into ``cache``, replacing what it
        holds, unless fewer than ``have`` tokens' worth pass their checks (a block that
        fails is deleted, and the blocks before it are used). Returns the tokens loaded."""
        started = time.perf_counter()
        expected = kv_blocks.expected_layout(cache)
        blocks = []
        for i, key in enumerate(keys):
            try:
                blocks.append(kv_blocks.read(self.path(key), {"tier": self.key, "block": key},
                                             list(prompt[i * BLOCK:(i + 1) * BLOCK]),
                                             expected))
            except kv_blocks.Corrupt as e:
                self._drop(self.path(key), str(e))
                break
            except FileNotFoundError:  # evicted meanwhile (by another server on the folder)
                break
            _touch(self.path(key))  # recently used: dropped last
        n = len(blocks) * BLOCK
        if n <= have:
            return 0
        kv_blocks.assemble(cache, blocks)
        cache.tokens, cache.from_disk = list(prompt[:n]), n
        cache.loading = time.perf_counter() - started
        self.loaded += len(blocks)
        return n

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
        snapshot = kv_blocks.snapshot(cache, n)
        if snapshot is None:
            return False  # a type the format does not store
        self._start()
        try:
            self._queue.put(snapshot, block=block)
        except queue.Full:
            self.skipped += 1
            return False
        return True

    def saving(self, pieces: Iterator, cache: PromptCache) -> Iterator:
        """``pieces`` (a reply streamed into ``cache``), then ``cache`` handed over: when
        the reply ended or its reader stopped, not after a failure (its layers may be half
        updated)."""
        ended = False
        try:
            yield from pieces
            ended = True
        except GeneratorExit:
            ended = True
            raise
        finally:
            if ended:
                self.save(cache)

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

    def _write(self, snapshot: kv_blocks.Snapshot) -> None:
        hosts = [[(offset, [np.asarray(a) for a in arrays], dtypes)
                  for offset, arrays, dtypes in parts] for parts in snapshot.layers]
        keys = block_keys(self.key, snapshot.tokens)
        for i, key in enumerate(keys):
            path = self.path(key)
            if path.is_file():
                _touch(path)
                continue
            # this process's and thread's own temporary (two tiers of one model may write the
            # same block at once); another run's leftover is cleaned by the folder's next tier
            tmp = leftovers.temp_file(path.with_name(
                f"{path.stem}-{threading.get_ident()}{path.suffix}"))
            try:
                kv_blocks.write(path, tmp, {"tier": self.key, "block": key}, i,
                                snapshot.tokens[i * BLOCK:(i + 1) * BLOCK], hosts, BLOCK)
            except OSError as e:
                full = e.errno in (errno.ENOSPC, errno.EDQUOT)
                self._stop_writing("the disk is full" if full else
                                   f"cannot write {path}: {e.strerror or e}")
                return
            self.written += 1
        self._keep_under_cap()

    def _keep_under_cap(self) -> None:
        """Drop the least recently used block files under the root (every tier's) until
        they hold at most ``cap`` bytes. Only files named as ours are counted or dropped
        (a tier folder's 32 hex digits, a block's 64 and the suffix), so a user's own files
        in a folder given as QWEN_MLX_KV_DISK are never touched, nor a block being
        written (its temporary's name is hidden)."""
        files = []
        for path in self.root.glob(f"*/*{SUFFIX}"):
            if not (OURS.fullmatch(path.name) and TIER.fullmatch(path.parent.name)):
                continue
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
