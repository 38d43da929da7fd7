"""What the benchmark scripts share: the CPU's name and flags (named with every figure) and a median timer."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path


def cpu_name() -> str:
    """The CPU's name as CPUID gives it (clipblip.engine.machine), else /proc/cpuinfo's."""
    try:
        from clipblip.engine.machine import this_machine

        return this_machine().cpu
    except ImportError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
             "amx_bf16")


def cpu_flags() -> list[str]:
    """The instruction-set flags that decide which kernels run fast (int8 VNNI, bf16, AMX): CPUID's, as the kernels
    see them (clipblip.engine.machine), else /proc/cpuinfo's."""
    try:
        from clipblip.engine.machine import this_machine

        return list(this_machine().flags)
    except ImportError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in CPU_FLAGS if flag in present]
    except OSError:
        pass
    return []


def cpu_class() -> str:
    """The class of int8 kernels this CPU runs: amx, vnni, avx512bw, avx2, neon (clipblip.engine.machine)."""
    try:
        from clipblip.engine.machine import this_machine

        return this_machine().int8_kernels
    except ImportError:
        return "unknown"


def median_ms(fn, repeat: int) -> float:
    """Median wall time of ``fn()`` in ms over ``repeat`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
