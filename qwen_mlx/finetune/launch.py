"""`qwen-mlx finetune --hostfile FILE` / `--local-ranks N`: start the ranks with MLX's own
launcher (``mlx.launch``; the ring backend unless the hostfile names another) and tell the
user which rank ended a run.

``mlx.launch`` stops every rank when one exits with an error, but it exits 0 itself and
says only "Node with rank N exited with code C" among the ranks' output. This wrapper reads
those lines, keeps the first rank that failed, and ends with one error naming that rank and
its host and a non-zero exit; the ring backend's socket noise that follows a lost peer is
dropped. Everything else (ssh, the hostfile, ports, environment) is mlx.launch's.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import QwenMlxError

ENDED = re.compile(r"Node with rank (\d+) (?:exited with code (-?\d+)|was killed)")
NOISE = ("[ring] ",)  # the ring backend's lines after a lost peer: our error says it once
RANKED = re.compile(r"^rank \d+ \([^)]*\): ")


@dataclass
class Outcome:
    code: int  # this command's exit code
    message: str | None  # the one line to print, when a rank failed


def hosts_of(hostfile: Path) -> list[str]:
    """The ssh names of an mlx.launch hostfile's ranks, in rank order."""
    try:
        data = json.loads(Path(hostfile).read_text())
        hosts = data["hosts"] if isinstance(data, dict) else data
        return [h["ssh"] for h in hosts]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise QwenMlxError(f"cannot read the hostfile {hostfile} ({e}); it is mlx.launch's "
                           f"JSON: a list of {{\"ssh\": HOST, \"ips\": [IP]}}, one per rank") \
            from None


def _free_port(count: int) -> int:
    """A base port with ``count`` free ports after it (the ring listens on one per rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count < 65535 and all(_free(base + i) for i in range(count)):
            return base
    raise QwenMlxError("found no free local ports for the ranks")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _launcher() -> str:
    """Python that runs MLX's `mlx.launch` console script, found through its entry point
    (its module has no ``__main__``)."""
    from importlib.metadata import entry_points

    found = [e for e in entry_points(group="console_scripts") if e.name == "mlx.launch"]
    if not found:
        raise QwenMlxError("this MLX has no mlx.launch; several-machine training needs "
                           "mlx >= 0.22")
    module, _, func = found[0].value.partition(":")
    return CALM_SELECT + f"import sys; from {module} import {func} as launch\n" \
        f"calm(sys.modules[{module!r}]); sys.exit(launch())"


# mlx.launch relays each rank's pipes in a thread that selects on the rank's stdin pipe for
# writing, with nothing to write: the pipe is always writable, so the select never waits
# and the thread spins a core for the whole run (17 s of CPU in a 23 s two-rank run here,
# more than either rank). Its select is replaced by one that, when only that pipe is
# ready, waits up to 50 ms for output instead; output still passes at once.
CALM_SELECT = """import select as _select
def calm(module):
    plain = _select.select
    if getattr(module, "select", None) is not plain:
        return
    def select(r, w, x, timeout=None):
        got = plain(r, w, x, timeout)
        if w and timeout and got[1] and not got[0]:
            got = (plain(r, [], x, min(timeout, 0.05))[0], got[1], got[2])
        return got
    module.select = select
"""


def command(args: list[str], *, hostfile: Path | None, local: int | None) -> tuple[list[str],
                                                                                  list[str]]:
    """(the mlx.launch command line, each rank's host)."""
    launch = [sys.executable, "-c", _launcher()]
    if hostfile is not None:  # its "backend" (ring by default; jaccl for RDMA) is mlx.launch's
        hosts = hosts_of(hostfile)
        launch += ["--hostfile", str(hostfile)]
    else:
        hosts = [socket.gethostname()] * local
        launch += ["--backend", "ring", "--hosts", "127.0.0.1", "-n", str(local),
                   "--starting-port", str(_free_port(local))]
    return [*launch, "--python", sys.executable, "--", "-m", "qwen_mlx", "finetune",
            *args], hosts


def run(args: list[str], *, hostfile: Path | None = None, local: int | None = None,
        out=sys.stdout, err=sys.stderr) -> Outcome:
    """Run `qwen-mlx finetune ARGS` on every rank; relay their output; name the failure."""
    cmd, hosts = command(args, hostfile=hostfile, local=local)
    # stdin: a pipe never written to, so mlx.launch's wait for input waits (the ranks read
    # none); at end of file (/dev/null, a closed pipe) it would spin reading nothing
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    ended: list[tuple[int, int | None]] = []
    said: set[str] = set()  # the ranks' own errors, without their "rank N (host): "

    def relay(stream, to) -> None:
        for line in stream:
            found = ENDED.search(line)
            if found:
                ended.append((int(found[1]), int(found[2]) if found[2] else None))
                continue
            if line.startswith(NOISE):
                continue
            if line.startswith("error: "):  # the same refusal from every rank: once
                text = RANKED.sub("", line[len("error: "):])
                if text in said:
                    continue
                said.add(text)
            to.write(line)
            to.flush()

    threads = [threading.Thread(target=relay, args=(proc.stdout, out)),
               threading.Thread(target=relay, args=(proc.stderr, err))]
    for t in threads:
        t.start()
    try:
        proc.wait()
    except KeyboardInterrupt:  # the ranks got the same Ctrl-C; let them save and stop
        proc.wait()
    for t in threads:
        t.join()
    proc.stdin.close()
    if not ended:
        return Outcome(proc.returncode, None)
    if all(code == 130 for _, code in ended):
        return Outcome(130, None)  # Ctrl-C: every rank said so itself
    rank, code = ended[0]
    if code == 1 and said:
        return Outcome(1, None)  # the first rank to end said why itself

    how = f"exit code {code}" if code is not None else "killed"
    host = hosts[rank] if rank < len(hosts) else "?"
    return Outcome(1, f"rank {rank} ({host}) ended ({how}); the other ranks were stopped. "
                      f"The same command with --resume continues from the last checkpoint")
