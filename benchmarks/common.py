"""Helpers shared by the benchmarks: quiet-machine checks, matmul peak, tables and JSON results.

The benchmark machines are small (2 cores) and often shared, and an OpenMP program that loses a core to
another process slows down far more than in proportion. So every timed window records how much CPU other
processes used during it (from /proc/stat minus this process's own time), windows where they used more
than `MAX_FOREIGN` of one core are dropped, and the benchmarks wait for a quiet machine between windows.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
MAX_FOREIGN = 0.05  # cores' worth of CPU other processes may use during a kept window
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class CpuSnapshot:
    wall: float
    busy_s: float  # whole machine, all cores, seconds of non-idle time
    own_s: float  # this process (all threads), seconds of CPU

    @classmethod
    def take(cls) -> CpuSnapshot:
        busy = own = 0.0
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
            busy = (sum(fields) - fields[3] - fields[4]) / _TICK
        except OSError:
            pass
        times = os.times()
        own = times.user + times.system
        return cls(time.perf_counter(), busy, own)

    def foreign_cores(self, later: CpuSnapshot) -> float:
        """Cores' worth of CPU used by other processes between this snapshot and `later`."""
        wall = max(later.wall - self.wall, 1e-9)
        return max(0.0, (later.busy_s - self.busy_s) - (later.own_s - self.own_s)) / wall


def wait_for_quiet(timeout_s: float = 120.0, interval_s: float = 0.5) -> float:
    """Sleep until other processes use less than MAX_FOREIGN of a core; returns the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        before = CpuSnapshot.take()
        time.sleep(interval_s)
        if before.foreign_cores(CpuSnapshot.take()) < MAX_FOREIGN:
            break
    return time.perf_counter() - started


def timed_repeats(
    fn: Callable[[], Any], repeats: int, *, max_tries: int | None = None, quiet_timeout_s: float = 60.0
) -> dict[str, Any]:
    """Median wall time of `fn` over `repeats` calls made on a quiet machine (noisy calls are retried)."""
    kept: list[float] = []
    dropped = 0
    tries = max_tries or repeats * 4
    while len(kept) < repeats and tries > 0:
        tries -= 1
        wait_for_quiet(quiet_timeout_s)
        before = CpuSnapshot.take()
        fn()
        after = CpuSnapshot.take()
        if before.foreign_cores(after) > MAX_FOREIGN and tries > 0:
            dropped += 1
            continue
        kept.append(after.wall - before.wall)
    return {"median_s": statistics.median(kept), "times_s": kept, "dropped_noisy": dropped}


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 7) -> dict[str, Any]:
    """FLOP/s of a large square torch.mm with all threads: the peak MFU is measured against."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    timing = timed_repeats(lambda: torch.mm(a, b), repeats)
    return {"dtype": str(dtype).removeprefix("torch."), "n": n, "flops_per_s": 2 * n**3 / timing["median_s"], **timing}


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), **data}, indent=2, default=str) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path
