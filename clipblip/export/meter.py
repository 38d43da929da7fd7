"""What an export costs, measured while it runs: wall and CPU seconds and peak resident memory, per step.

Resident memory is read from ``/proc/self/statm`` by a sampling thread (Linux), which can miss a peak held for
less than its interval or while a C call holds the GIL; a step during which the process's high-water mark
(getrusage) rose has that mark as its peak, which is exact. Elsewhere only the high-water marks are known.

:func:`release_memory` hands back to the system what the steps freed: glibc keeps freed blocks in its heap,
where protobuf's, numpy's and ONNX Runtime's allocations leave them fragmented (measured on CLIP base int8:
4.0 GB resident between graphs, 1.1 GB after a trim).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
import threading
import time

try:
    import resource
except ImportError:  # Windows
    resource = None
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["Meter", "release_memory", "resident_mb"]

INTERVAL_S = 0.01
STATM = "/proc/self/statm"
MEASURED = (f"peak resident memory (RSS) of the exporting process: sampled every {INTERVAL_S * 1000:g} ms from "
            f"{STATM}, or the process's high-water mark (getrusage) where it rose during the step; seconds are "
            f"wall-clock, cpu_seconds user + system time of the process")


def resident_mb() -> float | None:
    """This process's resident memory in MiB, or None where /proc is not there."""
    try:
        with open(STATM, "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None
HIGH_WATER_ONLY = ("peak resident memory: the process's high-water mark (getrusage) where it rose during a step, "
                   "else unknown (null); seconds are wall-clock, cpu_seconds user + system time of the process")


def high_water_mb() -> float | None:
    """The most memory this process has held resident so far, in MiB (kB on Linux, bytes on macOS)."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # a C library without it (musl)
        return None


_TRIM = _malloc_trim()


def release_memory(collect: bool = False) -> None:
    """Return the C heap's free pages to the system (glibc's malloc_trim); ``collect`` first collects Python's
    reference cycles (a full collection takes 0.4 s with torch and transformers loaded: only where a large
    object may sit in a cycle)."""
    if collect:
        gc.collect()
    if _TRIM is not None:
        _TRIM(0)


class Meter:
    """Times each step of an export and samples its peak resident memory; :meth:`record` is the manifest's
    ``export`` section. Used as a context manager, which runs the sampling thread."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, Any]] = {}
        self._peak: float | None = None
        self._step_peak: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = (time.perf_counter(), time.process_time())
        self._high_water = high_water_mb()

    def __enter__(self) -> Meter:
        self._peak = self._step_peak = resident_mb()
        self._high_water = high_water_mb()
        if self._peak is not None:
            self._thread = threading.Thread(target=self._sample, name="clipblip-meter", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            self._note(resident_mb())

    def _note(self, now: float | None) -> None:
        if now is not None:
            self._peak = max(self._peak or 0.0, now)
            self._step_peak = max(self._step_peak or 0.0, now)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Measure the block as the step ``name`` (a name measured twice adds up)."""
        self._step_peak = resident_mb()
        start, cpu, high_water = time.perf_counter(), time.process_time(), high_water_mb()
        try:
            yield
        finally:
            self._note(resident_mb())
            if high_water is not None and (now := high_water_mb()) > high_water:  # a new high for the process
                self._note(now)
            seen = self.steps.get(name, {"seconds": 0.0, "cpu_seconds": 0.0, "peak_rss_mb": None})
            peak = max(filter(None, (seen["peak_rss_mb"], self._step_peak)), default=None)
            self.steps[name] = {"seconds": round(seen["seconds"] + time.perf_counter() - start, 2),
                                "cpu_seconds": round(seen["cpu_seconds"] + time.process_time() - cpu, 2),
                                "peak_rss_mb": None if peak is None else round(peak)}

    def record(self) -> dict[str, Any]:
        """The whole export so far and each step: seconds, CPU seconds, peak resident MiB (None when unknown)."""
        self._note(resident_mb())
        if self._high_water is not None and (now := high_water_mb()) > self._high_water:
            self._note(now)
        start, cpu = self._start
        return {"seconds": round(time.perf_counter() - start, 2), "cpu_seconds": round(time.process_time() - cpu, 2),
                "peak_rss_mb": None if self._peak is None else round(self._peak),
                "measured": MEASURED if self._thread is not None else HIGH_WATER_ONLY,
                "steps": dict(self.steps)}
