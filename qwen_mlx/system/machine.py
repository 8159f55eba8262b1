"""What this machine is: chip, memory, the memory budget MLX may use, and memory bandwidth.

The memory plan needs the budget; the benchmark needs the bandwidth, because decoding one
token reads every weight once and so cannot beat bytes-per-token / bandwidth.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass

import psutil

from ..units import GIB, parse_size

# Unified-memory bandwidth in GB/s (10^9), from Apple's specifications. The keys are the
# chip names sysctl reports ("Apple M2 Pro"). Where the bandwidth depends on the GPU
# configuration, BY_GPU_CORES decides from system_profiler's core count; without one, the
# largest configuration is assumed and the report says so.
BANDWIDTH_GBS = {
    "Apple M1": 68.25, "Apple M1 Pro": 204.8, "Apple M1 Max": 409.6, "Apple M1 Ultra": 819.2,
    "Apple M2": 102.4, "Apple M2 Pro": 204.8, "Apple M2 Max": 409.6, "Apple M2 Ultra": 819.2,
    "Apple M3": 102.4, "Apple M3 Pro": 153.6, "Apple M3 Max": 409.6, "Apple M3 Ultra": 819.2,
    "Apple M4": 120.0, "Apple M4 Pro": 273.0, "Apple M4 Max": 546.0,
}
# Chips whose bandwidth depends on the GPU configuration: {chip: {GPU cores: GB/s}}.
BY_GPU_CORES = {"Apple M3 Max": {30: 300.0, 40: 409.6}, "Apple M4 Max": {32: 410.0, 40: 546.0}}
BUDGET_FRACTION = 0.75  # of RAM, where MLX does not report a recommended working set


@dataclass
class Machine:
    chip: str
    memory_bytes: int
    budget_bytes: int  # what MLX should plan to use at most
    budget_source: str
    bandwidth_gbs: float | None
    bandwidth_source: str

    def to_dict(self) -> dict:
        return asdict(self)


def chip_name() -> str:
    """sysctl's brand string on macOS ("Apple M3 Pro"); the CPU model elsewhere."""
    if platform.system() == "Darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                  capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "Apple Silicon (unknown)"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def known_bandwidth(chip: str, gpu_cores: int | None = None) -> float | None:
    variants = BY_GPU_CORES.get(chip.strip(), {})
    return variants.get(gpu_cores) or BANDWIDTH_GBS.get(chip.strip())


def gpu_cores(profile: str | None = None) -> int | None:
    """The GPU core count from ``system_profiler SPDisplaysDataType`` (macOS), else None."""
    if profile is None:
        if platform.system() != "Darwin":
            return None
        try:
            profile = subprocess.run(["system_profiler", "SPDisplaysDataType"],
                                     capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return None
    m = re.search(r"Total Number of Cores:\s*(\d+)", profile)
    return int(m.group(1)) if m else None


def recommended_working_set() -> int | None:
    """MLX's recommended working-set size on Metal (about 2/3 to 3/4 of RAM), else None."""
    import mlx.core as mx

    try:
        if not mx.metal.is_available():
            return None
        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
        size = info.get("max_recommended_working_set_size")
        return int(size) if size else None
    except (AttributeError, RuntimeError):
        return None


def budget_for(memory_bytes: int) -> int:
    return int(memory_bytes * BUDGET_FRACTION)


def this_machine(memory: str | int | None = None) -> Machine:
    """This machine; ``memory`` (or $QWEN_MLX_MEMORY) plans for another amount of RAM, to
    leave room for other apps or to ask what a 16 GB Mac would fit."""
    chip = chip_name()
    cores = gpu_cores() if chip in BY_GPU_CORES else None
    bandwidth = known_bandwidth(chip, cores)
    source = ("unknown chip" if bandwidth is None else "Apple's specification" +
              (f", {cores}-core GPU" if cores else
               " (GPU cores unknown: the largest configuration)" if chip in BY_GPU_CORES
               else ""))
    memory = memory if memory is not None else os.environ.get("QWEN_MLX_MEMORY") or None
    if memory is not None:
        total = parse_size(memory, "a memory size") if isinstance(memory, str) else int(memory)
        return Machine(chip, total, budget_for(total), f"{BUDGET_FRACTION:.0%} of the "
                       f"{total / GIB:.1f} GiB asked for", bandwidth, source)
    total = psutil.virtual_memory().total
    recommended = recommended_working_set()
    if recommended:
        return Machine(chip, total, recommended, "MLX's recommended working set", bandwidth,
                       source)
    return Machine(chip, total, budget_for(total), f"{BUDGET_FRACTION:.0%} of RAM", bandwidth,
                   source)
