"""What the CPU offers the kernels, read from CPUID as ONNX Runtime and OpenVINO read it.

``/proc/cpuinfo`` describes the host; the kernels a library picks follow the CPUID instruction, which
an emulator (qemu-user) or a hypervisor may answer differently. On x86-64 a 40-byte routine executes
CPUID and XGETBV directly (as py-cpuinfo does); where that is not possible, numpy's own CPUID-based
feature table is used instead (it lacks AMX and AVX-VNNI, which the record then says).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import struct
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["Machine", "this_machine", "INT8_FLAGS", "usable_cores"]

# the features that decide which int8 / bf16 kernels run, as /proc/cpuinfo spells them
INT8_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "avx_vnni_int8", "avx512_bf16", "amx_int8",
              "amx_bf16", "asimddp", "i8mm")

# x86-64 System V: cpuid(leaf edi, subleaf esi, uint32 out[4] rdx) and xgetbv(0) -> rax
_CPUID = bytes([
    0x53,                    # push rbx
    0x89, 0xF8,              # mov eax, edi
    0x89, 0xF1,              # mov ecx, esi
    0x49, 0x89, 0xD0,        # mov r8, rdx
    0x0F, 0xA2,              # cpuid
    0x41, 0x89, 0x00,        # mov [r8], eax
    0x41, 0x89, 0x58, 0x04,  # mov [r8+4], ebx
    0x41, 0x89, 0x48, 0x08,  # mov [r8+8], ecx
    0x41, 0x89, 0x50, 0x0C,  # mov [r8+12], edx
    0x5B,                    # pop rbx
    0xC3,                    # ret
])
_XGETBV = bytes([0x31, 0xC9, 0x0F, 0x01, 0xD0, 0x48, 0xC1, 0xE2, 0x20, 0x48, 0x09, 0xD0, 0xC3])
# (leaf, subleaf, register index eax=0 ebx=1 ecx=2 edx=3, bit) of each feature
_BITS = {"avx2": (7, 0, 1, 5), "avx512f": (7, 0, 1, 16), "avx512bw": (7, 0, 1, 30), "avx512_vnni": (7, 0, 2, 11),
         "amx_bf16": (7, 0, 3, 22), "amx_tile": (7, 0, 3, 24), "amx_int8": (7, 0, 3, 25),
         "avx_vnni": (7, 1, 0, 4), "avx512_bf16": (7, 1, 0, 5), "avx_vnni_int8": (7, 1, 3, 4)}
# XCR0 state the OS must save for a feature to be usable: AVX (ymm), AVX-512 (opmask, zmm), AMX (tiles)
_XCR0 = {"avx": 0x6, "avx512": 0xE6, "amx": 0x60006}


@dataclass(frozen=True)
class Machine:
    """The CPU as its kernels see it: ``cpu`` (brand string), ``arch``, the int8/bf16-relevant ``flags`` and
    where they were read (``source``: "cpuid", or "numpy" when CPUID could not be run directly)."""

    cpu: str
    arch: str
    flags: tuple[str, ...]
    source: str

    @property
    def int8_kernels(self) -> str:
        """The class of ONNX Runtime's u8 x s8 matrix kernels here: "amx", "vnni" (32-bit dot products, no
        16-bit intermediate), "avx512bw" or "avx2" (u8 x s8 pairs summed in saturating 16 bits), "neon", or
        "other"."""
        has = set(self.flags)
        if "amx_int8" in has:
            return "amx"
        if has & {"avx512_vnni", "avx_vnni"}:
            return "vnni"
        if "avx512bw" in has:
            return "avx512bw"
        if "avx2" in has:
            return "avx2"
        return "neon" if self.arch in ("aarch64", "arm64") else "other"

    def describe(self) -> str:
        return f"{self.cpu} ({self.arch}; {' '.join(self.flags) or 'no ' + '/'.join(INT8_FLAGS[:3])})"

    def to_dict(self) -> dict:
        return {"cpu": self.cpu, "arch": self.arch, "flags": list(self.flags), "int8_kernels": self.int8_kernels,
                "source": self.source}


def _x86_cpuid() -> tuple[str, set[str]]:
    code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    code.write(_CPUID + _XGETBV)
    address = ctypes.addressof(ctypes.c_char.from_buffer(code))
    cpuid = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(address)
    xgetbv = ctypes.CFUNCTYPE(ctypes.c_uint64)(address + len(_CPUID))

    def query(leaf: int, subleaf: int = 0) -> tuple[int, ...]:
        registers = (ctypes.c_uint32 * 4)()
        cpuid(leaf, subleaf, registers)
        return tuple(registers)

    top, extended = query(0)[0], query(0x80000000)[0]
    brand = ""
    if extended >= 0x80000004:
        raw = b"".join(struct.pack("<4I", *query(leaf)) for leaf in (0x80000002, 0x80000003, 0x80000004))
        brand = raw.split(b"\0")[0].decode("ascii", "replace").strip()
    osxsave = bool(query(1)[2] >> 27 & 1)
    xcr0 = xgetbv() if osxsave else 0
    registers = {(7, 0): query(7, 0) if top >= 7 else (0,) * 4,
                 (7, 1): query(7, 1) if top >= 7 else (0,) * 4}
    found = {name for name, (leaf, sub, reg, bit) in _BITS.items() if registers[leaf, sub][reg] >> bit & 1}
    # a feature counts only where the OS saves its registers (as ONNX Runtime checks XCR0)
    if xcr0 & _XCR0["avx"] != _XCR0["avx"]:
        found -= {"avx2", "avx_vnni", "avx_vnni_int8"}
    if xcr0 & _XCR0["avx512"] != _XCR0["avx512"]:
        found = {f for f in found if not f.startswith("avx512")}
    if xcr0 & _XCR0["amx"] != _XCR0["amx"]:
        found = {f for f in found if not f.startswith("amx")}
    code.close()
    return brand, found


_NUMPY_NAMES = {"AVX2": "avx2", "AVX512BW": "avx512bw", "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16",
                "ASIMDDP": "asimddp"}


def _numpy_features() -> set[str]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features
    return {name for key, name in _NUMPY_NAMES.items() if features.get(key)}


def _cpuinfo_field(*keys: str) -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in keys and value.strip():
                    return value.strip()
    except OSError:
        pass
    return ""


@lru_cache(maxsize=1)
def this_machine() -> Machine:
    """The machine this process runs on (read once)."""
    arch = platform.machine().lower()
    cpu, flags, source = "", set(), "numpy"
    if arch in ("x86_64", "amd64"):
        try:
            cpu, flags = _x86_cpuid()
            source = "cpuid"
        except (OSError, ValueError, AttributeError):  # no executable memory here: numpy's reading instead
            flags = _numpy_features()
    else:
        flags = _numpy_features()
        if arch in ("aarch64", "arm64"):
            flags |= {"i8mm"} if "i8mm" in _cpuinfo_field("Features").split() else set()
    cpu = cpu or _cpuinfo_field("model name", "Model", "Processor", "cpu model") or platform.processor() or arch
    return Machine(cpu=cpu, arch=arch, flags=tuple(f for f in INT8_FLAGS if f in flags), source=source)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system says it, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
