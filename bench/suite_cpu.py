"""A pytest plugin for ``bench/suite_time.py suite --cpu``: per test, the wall seconds and
the CPU seconds of the worker process and of the child processes it waited for (servers,
CLI runs, installs), written per xdist worker to ``$SUITE_CPU_OUT/<worker>.json``. A test
whose wall time is well above its CPU time waits (sleeps, timeouts, a browser); one whose
CPU time matches its wall time is bound by the CPU, and only less work makes it faster."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import pytest

_rows: list[dict] = []


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    wall, cpu = time.perf_counter(), _cpu()
    yield
    _rows.append({"test": item.nodeid, "wall": round(time.perf_counter() - wall, 3),
                  "cpu": round(_cpu() - cpu, 3)})


def pytest_sessionfinish(session) -> None:
    out = Path(os.environ["SUITE_CPU_OUT"])
    out.mkdir(parents=True, exist_ok=True)
    name = os.environ.get("PYTEST_XDIST_WORKER", "main")
    (out / f"{name}.json").write_text(json.dumps(_rows))
