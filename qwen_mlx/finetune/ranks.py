"""Several Macs, one run: data-parallel LoRA over MLX's distributed layer.

Started by ``mlx.launch`` (or ``qwen-mlx finetune --hostfile``, which calls it), every
process is one rank of ``mx.distributed``'s group: each reads its own share of every global
batch, and the trainer adds the ranks' gradient sums, loss sums and token counts with one
``all_sum`` per step before dividing by the global trained-token count, so a step is the
step one machine would take on the whole batch. The rest is bookkeeping that keeps the
ranks in lockstep and a broken run short:

* rank 0 alone prints, logs metrics and writes checkpoints; on ``--resume`` it sends the
  checkpoint's files to the others, so only its disk needs the output folder;
* every collective runs under a watchdog: no answer within ``timeout`` seconds ends the
  rank with one line naming it and its host (a dead peer's closed socket fails the
  collective at once; the watchdog catches a peer that hangs);
* no communication layer of our own: everything goes through ``mx.distributed.all_sum``.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import mlx.core as mx

from ..errors import QwenMlxError

PEER_TIMEOUT = 300.0  # seconds a collective may wait for the other ranks
NAME_BYTES = 64  # a host name's share of the name exchange


class Ranks:
    """This process's place in the run, and the collectives the trainer uses."""

    def __init__(self, group=None, timeout: float = PEER_TIMEOUT) -> None:
        self.group = group
        self.rank = group.rank() if group is not None else 0
        self.size = group.size() if group is not None else 1
        self.timeout = timeout
        self.comm_seconds = 0.0  # time spent in collectives (the bench splits it out)
        self._since: float | None = None
        self.hosts = ["?"] * self.size  # the others' are learned below
        self.hosts[self.rank] = socket.gethostname()
        if self.size > 1:
            threading.Thread(target=self._watch, daemon=True).start()
            self.hosts = self._exchange_names()

    @classmethod
    def join(cls, timeout: float = PEER_TIMEOUT) -> "Ranks":
        """The group ``mlx.launch`` set up, or a single rank when there is none."""
        if "MLX_RANK" not in os.environ or not mx.distributed.is_available():
            return cls(None, timeout)
        group = mx.distributed.init()
        return cls(group if group.size() > 1 else None, timeout)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def name(self, rank: int | None = None) -> str:
        rank = self.rank if rank is None else rank
        return f"rank {rank} ({self.hosts[rank]})"

    def share(self, items: list) -> list:
        """This rank's contiguous share of ``items`` (sizes differ by at most one; a share
        may be empty when there are fewer items than ranks)."""
        n = len(items)
        return items[self.rank * n // self.size:(self.rank + 1) * n // self.size]

    def sum(self, arrays: list[mx.array]) -> list[mx.array]:
        """Every array summed over the ranks, in one float32 collective."""
        if self.size == 1:
            return arrays
        flat = mx.concatenate([a.astype(mx.float32).reshape(-1) for a in arrays])
        mx.eval(flat)  # this rank's own work is done before the clock starts
        total = self._collective(lambda: mx.distributed.all_sum(flat, group=self.group))
        out, at = [], 0
        for a in arrays:
            out.append(total[at:at + a.size].reshape(a.shape).astype(a.dtype))
            at += a.size
        return out

    def send_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's ``data`` on every rank (the others pass None)."""
        if self.size == 1:
            return data or b""
        length = self._collective(lambda: mx.distributed.all_sum(
            mx.array([len(data) if self.leader and data else 0]), group=self.group)).item()
        if not length:
            return b""
        raw = mx.array(list(data), dtype=mx.uint8) if self.leader else \
            mx.zeros((length,), dtype=mx.uint8)
        got = self._collective(lambda: mx.distributed.all_sum(raw, group=self.group))
        return bytes(got.tolist())

    def send_files(self, folder: Path | None, names: list[str], into: Path) -> Path | None:
        """Rank 0's files ``names`` in ``folder`` copied into every other rank's ``into``;
        returns where this rank finds them. How a resume reaches machines that do not hold
        the output folder."""
        if self.size == 1:
            return folder
        if self.leader:
            for name in names:
                self.send_bytes((folder / name).read_bytes())
            return folder
        into.mkdir(parents=True, exist_ok=True)
        for name in names:
            (into / name).write_bytes(self.send_bytes(None))
        return into

    def agree(self, value: str, what: str) -> None:
        """Refuse on a rank whose ``value`` differs from rank 0's (the data, the model)."""
        theirs = self.send_bytes(value.encode() if self.leader else None).decode()
        if theirs != value:
            raise QwenMlxError(f"{self.name()} has other {what} than {self.name(0)}; every "
                               f"machine needs the same")

    def _exchange_names(self) -> list[str]:
        mine = socket.gethostname().encode()[:NAME_BYTES].ljust(NAME_BYTES, b"\0")
        table = mx.zeros((self.size, NAME_BYTES), dtype=mx.uint8)
        table[self.rank] = mx.array(list(mine), dtype=mx.uint8)
        got = self._collective(lambda: mx.distributed.all_sum(table, group=self.group))
        return [bytes(row).rstrip(b"\0").decode(errors="replace") for row in got.tolist()]

    def _collective(self, op) -> mx.array:
        start = time.perf_counter()
        self._since = time.monotonic()
        try:
            out = op()
            mx.eval(out)
        except RuntimeError as e:
            raise QwenMlxError(f"{self.name()} lost the connection to the other ranks "
                               f"({str(e).splitlines()[0]}); one of them has stopped (its "
                               f"error says why); resume with --resume") from None
        finally:
            self._since = None
            self.comm_seconds += time.perf_counter() - start
        return out

    def _watch(self) -> None:
        """End this rank when a collective waits longer than ``timeout``: a peer that hangs
        must not hang the run."""
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            since = self._since
            if since is not None and time.monotonic() - since > self.timeout:
                sys.stderr.write(f"error: {self.name()}: no answer from the other ranks in "
                                 f"{self.timeout:g} s; stopping (resume with --resume)\n")
                sys.stderr.flush()
                os._exit(1)


SINGLE = Ranks()  # one machine: every collective is the identity
