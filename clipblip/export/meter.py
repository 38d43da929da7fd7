"""What an export costs, measured while it runs: wall and CPU seconds and peak resident memory, per step.

Resident memory is read from ``/proc/self/statm`` by a sampling thread (Linux), which can miss a peak held for
less than its interval or while a C call holds the GIL; a step during which the process's high-water mark
(getrusage) rose has that mark as its peak, which is exact. Elsewhere only the high-water marks are known.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from ..memory import STATM, high_water_mb, release_memory, resident_mb

__all__ = ["Meter", "LARGE_WEIGHTS"]

INTERVAL_S = 0.01
LARGE_WEIGHTS = 32 << 20  # bytes of weights above which what a step lets go is worth a full collection after it
MEASURED = (f"peak resident memory (RSS) of the exporting process: sampled every {INTERVAL_S * 1000:g} ms from "
            f"{STATM}, or the process's high-water mark (getrusage) where it rose during the step; seconds are "
            f"wall-clock, cpu_seconds user + system time of the process")
HIGH_WATER_ONLY = ("peak resident memory: the process's high-water mark (getrusage) where it rose during a step, "
                   "else unknown (null); seconds are wall-clock, cpu_seconds user + system time of the process")


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
    def step(self, name: str, collect: bool = False) -> Iterator[None]:
        """Measure the block as the step ``name`` (a name measured twice adds up), then give back to the system
        what it freed (:func:`release_memory`; ``collect``: Python's reference cycles first)."""
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
            release_memory(collect)

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
