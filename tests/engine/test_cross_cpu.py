"""Same answers on every CPU: the integer products clipblip's int8 formats rely on are exact on AVX2 kernels too,
and an int8 folder exported on this machine verifies under them (qemu-user's Haswell model: AVX2, no AVX-512,
no VNNI, no AMX; ONNX Runtime picks its kernels by CPUID, which qemu answers as a Haswell would)."""

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
ON_AVX2 = ROOT / "tools" / "on-avx2"
QEMU = shutil.which("qemu-x86_64")
needs_qemu = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or QEMU is None,
    reason="needs qemu-user (qemu-x86_64) on an x86-64 machine: `make qemu` installs it as root on Debian")

K = 64


def integer_product(a_type: int, b: np.ndarray) -> bytes:
    """One ``MatMulInteger(a (1, K), b (K, 1))`` graph with the constant weights ``b``."""
    g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", a_type, [1, K])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])],
                          [numpy_helper.from_array(b, "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def nbits_product(weight: int, zero_point: int) -> bytes:
    """8-bit ``MatMulNBits`` (blocks of 32, int8 activations: accuracy level 4) with every weight ``weight``."""
    g = helper.make_graph(
        [helper.make_node("MatMulNBits", ["a", "b", "s", "z"], ["y"], domain="com.microsoft", K=K, N=1, bits=8,
                          block_size=32, accuracy_level=4)], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(np.full((1, 2, 32), weight, np.uint8), "b"),
         numpy_helper.from_array(np.ones((1, 2), np.float32), "s"),
         numpy_helper.from_array(np.full((1, 2), zero_point, np.uint8), "z")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model.SerializeToString()


# name -> (graph, input, the exact result): every format's worst case, largest activations times largest weights
CASES = {
    "u8s7 (u8 x s8 in [-64, 64])": (integer_product(TensorProto.UINT8, np.full((K, 1), -64, np.int8)),
                                    np.full((1, K), 255, np.uint8), 255 * -64 * K),
    "u8u8 (u8 x u8)": (integer_product(TensorProto.UINT8, np.full((K, 1), 255, np.uint8)),
                       np.full((1, K), 255, np.uint8), 255 * 255 * K),
    "n8 (8-bit MatMulNBits, weight 255 - zero point 0)": (nbits_product(255, 0), np.ones((1, K), np.float32),
                                                          255 * K),
    "n8 (8-bit MatMulNBits, weight 0 - zero point 255)": (nbits_product(0, 255), -np.ones((1, K), np.float32),
                                                          255 * K),
}
# full 8-bit signed weights, which clipblip never writes: the product AVX2 kernels saturate
SATURATING = (integer_product(TensorProto.UINT8, np.full((K, 1), 127, np.int8)), np.full((1, K), 255, np.uint8),
              255 * 127 * K)

PROBE = """
import json, sys, onnxruntime as ort
from clipblip.engine.checks import verify_folder
from clipblip.engine.machine import this_machine
from tests.engine.test_cross_cpu import CASES, SATURATING
def run(model, a):
    return float(ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"a": a})[0].ravel()[0])
print(json.dumps({"machine": this_machine().to_dict(), "cases": {name: run(m, a) for name, (m, a, _) in CASES.items()},
                  "saturating": run(*SATURATING[:2]), "verify": {name: verify_folder(folder) for name, folder in
                                                                 json.loads(sys.argv[1]).items()}}))
"""


@pytest.fixture(scope="module")
def on_avx2(int8_folders) -> dict:
    """One process on AVX2 kernels (tools/on-avx2): the worst-case products of each format, and `verify` of the
    int8 folders exported on this machine (one emulated process: starting Python under qemu costs seconds)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    folders = json.dumps({name: str(folder) for name, folder in int8_folders.items()})
    done = subprocess.run([str(ON_AVX2), sys.executable, "-c", PROBE, folders], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_each_int8_format_multiplies_exactly_here(name):
    model, a, exact = CASES[name]
    got = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    assert float(got.ravel()[0]) == exact


@needs_qemu
def test_each_int8_format_multiplies_exactly_on_avx2_kernels_where_8_bit_signed_weights_saturate(on_avx2):
    assert on_avx2["machine"]["int8_kernels"] == "avx2" and "avx512_vnni" not in on_avx2["machine"]["flags"]
    assert on_avx2["cases"] == {name: float(exact) for name, (_, _, exact) in CASES.items()}
    # the control: the emulated process really ran AVX2 kernels (u8 x s8 pairs summed in saturating 16 bits)
    assert on_avx2["saturating"] == 32767 * K / 2 < SATURATING[2]


@needs_qemu
def test_int8_folders_exported_here_verify_on_avx2_kernels(int8_folders, on_avx2):
    from clipblip.engine.checks import verify_folder

    for name, folder in int8_folders.items():
        native = {r["graph"]: r for r in verify_folder(folder)}
        for result in on_avx2["verify"][name]:
            assert result["passed"] and result["precision"] == "int8", result
            assert result["machine"]["int8_kernels"] == "avx2"
            # exact integer products: the same numbers as here, up to float rounding
            for output, value in result["measured"].items():
                assert value == pytest.approx(native[result["graph"]]["measured"][output], abs=2e-6), (name, output)
