"""This process's resident memory, and giving freed memory back to the system (stdlib only: torch-free callers,
such as the demo, use it too).

glibc keeps the blocks a program frees in its heap, where the many allocations of protobuf, numpy and ONNX
Runtime leave them fragmented: a process that exported CLIP base in int8 held 4.0 GB between graphs, 1.1 GB
after :func:`release_memory`; the demo, 0.75 GB after running CLIP, 0.18 GB after.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
from typing import Any

try:
    import resource
except ImportError:  # Windows
    resource = None

__all__ = ["STATM", "resident_mb", "high_water_mb", "available_mb", "release_memory"]

STATM = "/proc/self/statm"
MEMINFO = "/proc/meminfo"


def resident_mb() -> float | None:
    """This process's resident memory in MiB, or None where /proc is not there."""
    try:
        with open(STATM, "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def high_water_mb() -> float | None:
    """The most memory this process has held resident so far, in MiB (getrusage: kB on Linux, bytes on macOS)."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def available_mb() -> float | None:
    """The memory the system can give new work without swapping (MemAvailable), in MiB; None where /proc is not
    there."""
    try:
        with open(MEMINFO, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**10
    except (OSError, ValueError, IndexError):
        pass
    return None


def _malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # a C library without it (musl)
        return None


_TRIM = _malloc_trim()


def release_memory(collect: bool = False) -> None:
    """Return the C heap's free pages to the system (glibc's malloc_trim; elsewhere nothing); ``collect`` first
    collects Python's reference cycles (a full collection takes 0.2 s with torch and transformers loaded: only
    where a large object may sit in a cycle)."""
    if collect:
        gc.collect()
    if _TRIM is not None:
        _TRIM(0)
