"""The machine record comes from CPUID, as the kernels see the CPU."""

import platform

import pytest

from clipblip.engine.machine import INT8_FLAGS, Machine, this_machine

X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.mark.skipif(not X86, reason="CPUID is an x86-64 instruction; other CPUs use numpy's feature table")
def test_cpuid_agrees_with_numpys_own_cpuid_reading():
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        from numpy.core._multiarray_umath import __cpu_features__ as features
    machine = this_machine()
    assert machine.source == "cpuid" and machine.cpu and machine.arch == platform.machine().lower()
    for numpy_name, flag in {"AVX2": "avx2", "AVX512BW": "avx512bw", "AVX512VNNI": "avx512_vnni",
                             "AVX512BF16": "avx512_bf16"}.items():
        assert (flag in machine.flags) == bool(features[numpy_name]), flag
    assert set(machine.flags) <= set(INT8_FLAGS)


@pytest.mark.parametrize("flags, kernels", [
    (("avx2",), "avx2"), (("avx2", "avx512bw"), "avx512bw"), (("avx2", "avx512bw", "avx512_vnni"), "vnni"),
    (("avx2", "avx_vnni"), "vnni"), (("avx2", "avx512bw", "avx512_vnni", "amx_int8", "amx_bf16"), "amx"),
])
def test_the_int8_kernel_class_follows_the_flags(flags, kernels):
    machine = Machine(cpu="test", arch="x86_64", flags=flags, source="cpuid")
    assert machine.int8_kernels == kernels and machine.describe() == f"test (x86_64; {' '.join(flags)})"
    assert Machine(cpu="arm", arch="aarch64", flags=("asimddp",), source="numpy").int8_kernels == "neon"
