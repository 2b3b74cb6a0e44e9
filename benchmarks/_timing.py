"""Timing and memory helpers shared by the benchmarks. Every benchmark reports ratios to a baseline measured
in the same process (times) or the same kind of fresh child process (memory), so machine load and the
allocator's state affect both sides alike."""

from __future__ import annotations

import ctypes
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence


def run_times(fn: Callable[[], object], repeats: int, warmup: int = 0) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls (sessions, caches)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def interleaved_times(
    fns: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds of each function per round, the functions called in turn within a round, so load from the
    other users of the machine hits all of them alike; every function is warmed up before any is timed."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def status_kib(field: str) -> int:
    """A /proc/self/status memory field in KiB. VmHWM (peak RSS) belongs to this process image; unlike
    ru_maxrss it does not inherit the parent's peak across fork+exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> int:
    """Hand freed memory back to the OS and reset VmHWM, so the next peak is what follows alone; returns
    the RSS (KiB) at that point. Without the trim, protobuf copies freed after a session build would be
    reused by the runs and hide their growth."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM
        f.write("5")
    return before


def child_json(script: str, args: Sequence[str]) -> dict:
    """Run ``script`` in a fresh interpreter and parse the JSON object on the last line it prints."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])
