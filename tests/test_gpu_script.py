"""benchmarks/gpu.sh and benchmarks/gpu_wheels.sh on a machine without a GPU: the plain no-GPU message
and exit status with nothing written, the argument handling, and the wheel pieces' whole journey (split,
grouped per device call, received, joined and checked) on small stand-in files, offline."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_SH = ROOT / "benchmarks" / "gpu.sh"
WHEELS_SH = ROOT / "benchmarks" / "gpu_wheels.sh"
RESULTS = ROOT / "benchmarks" / "results"
BASH = shutil.which("bash")
NO_GPU, NOT_READY = 3, 4
ORT_WHEEL = "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl"
SMALL_WHEEL = "transformers-5.24.0-py3-none-any.whl"

pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")


def environment(tmp_path: Path, nvidia_smi: str | None = None) -> dict[str, str]:
    """This process's environment with no nvidia-smi on PATH, or a stand-in one running ``nvidia_smi``."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "nvidia-smi").exists()]
    if nvidia_smi is not None:
        fake = tmp_path / "fake-bin"
        fake.mkdir(exist_ok=True)
        script = fake / "nvidia-smi"
        script.write_text("#!/bin/sh\n" + nvidia_smi)
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        dirs.insert(0, str(fake))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPBLIP_GPU") and k != "OUT"}
    env["PATH"] = os.pathsep.join(dirs)
    return env


def run(script: Path, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


NO_GPU_CASES = {
    "absent": (None, "nvidia-smi not found"),
    "driver down": ("echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"\n"
                    "echo 'Make sure that the latest NVIDIA driver is installed and running.'\nexit 9\n",
                    "nvidia-smi -L failed with status 9: NVIDIA-SMI has failed because it couldn't communicate "
                    "with the NVIDIA driver."),
    "lists nothing": ("exit 0\n", "nvidia-smi lists no GPU"),
    "no devices": ("echo 'No devices were found'\nexit 6\n", "nvidia-smi -L failed with status 6: No devices were found"),
}


@pytest.mark.parametrize("case", sorted(NO_GPU_CASES))
@pytest.mark.parametrize("args", [[], ["--run", "--budget", "300"], ["--check"], ["--receive", "carried", "--run"]],
                         ids=["default", "run", "check", "receive-then-run"])
def test_without_a_gpu_it_says_so_plainly_and_writes_nothing(tmp_path, case, args):
    nvidia_smi, why = NO_GPU_CASES[case]
    env = environment(tmp_path, nvidia_smi)
    work = tmp_path / "work"
    work.mkdir()
    env["OUT"] = str(work / "device-out")  # as on the device: the default results folder
    env["CLIPBLIP_GPU_STORE"] = str(work / "store")
    carried = work / "carried"
    carried.mkdir()
    (carried / "MANIFEST").write_text(f"{'0' * 64} 10 0 {SMALL_WHEEL}\n")
    (carried / SMALL_WHEEL).write_bytes(b"0123456789")
    before, results_before = tree(work), tree(RESULTS)

    result = run(GPU_SH, *args, env=env, cwd=work)

    assert result.returncode == NO_GPU, result.stderr
    assert result.stderr == f"gpu.sh: no NVIDIA GPU on this machine ({why}): nothing was measured\n"
    assert result.stdout == ""
    assert tree(work) == before  # no store, no results folder, nothing received
    assert tree(RESULTS) == results_before


def test_help_and_bad_arguments(tmp_path):
    env, cwd = environment(tmp_path), tmp_path
    shown = run(GPU_SH, "--help", env=env, cwd=cwd)
    assert shown.returncode == 0
    for word in ("--receive DIR", "--check", "--setup-only", "--out", "--budget", "no NVIDIA GPU", "gpu_wheels.sh"):
        assert word in shown.stdout
    for args, message in ((["--bogus"], "unknown argument '--bogus'"), (["--budget", "5"], "--budget 5"),
                          (["--budget", "0600"], "--budget 0600"), (["--check", "--run"], "exclude each other"),
                          (["--out"], "--out needs a value")):
        bad = run(GPU_SH, *args, env=env, cwd=cwd)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)
    assert tree(tmp_path) == []


def test_setup_without_wheels_is_not_ready(tmp_path):
    result = run(GPU_SH, "--setup-only", "--store", str(tmp_path / "store"), env=environment(tmp_path), cwd=tmp_path)
    assert result.returncode == NOT_READY
    assert "no wheels in" in result.stderr and "gpu_wheels.sh" in result.stderr


def test_wheel_plan_dry_run_downloads_and_writes_nothing(tmp_path):
    out = tmp_path / "wheels"
    result = run(WHEELS_SH, "--dry-run", "--python", "3.11", "--chunk-mib", "40", "--out", str(out),
                 env=environment(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    assert "pip download --no-deps --only-binary=:all:" in plan and "--python-version 3.11" in plan
    assert "onnxruntime-gpu==1.31.1" in plan and "transformers==5.24.0" in plan
    assert "--platform manylinux_2_28_x86_64" in plan and "parts of 40 MiB" in plan
    assert "dry run: nothing downloaded or written" in plan
    assert not out.exists()
    replaced = run(WHEELS_SH, "--dry-run", "--package", "onnxruntime-gpu==1.30.0", "--platform", "manylinux_2_34_x86_64",
                   env=environment(tmp_path), cwd=tmp_path)
    assert "onnxruntime-gpu==1.30.0" in replaced.stdout and "transformers" not in replaced.stdout
    assert "--platform manylinux_2_34_x86_64" in replaced.stdout and "manylinux_2_28" not in replaced.stdout
    assert "--python-version 3.12" in replaced.stdout  # the lent image's python3


@pytest.mark.parametrize("args, message", [
    (["--python", "3"], "--python 3: give MAJOR.MINOR"),
    (["--chunk-mib", "0"], "--chunk-mib 0"),
    (["--chunk-mib", "61"], "--chunk-mib 61"),
    (["--package", "onnxruntime-gpu"], "pin one version"),
    (["--package", "onnxruntime-gpu>=1.31"], "pin one version"),
    (["--from"], "--from needs a value"),
    (["--from", "/nonexistent/folder"], "--from /nonexistent/folder: not a folder"),
    (["--whatever"], "unknown argument '--whatever'"),
])
def test_wheel_plan_refuses_bad_arguments(tmp_path, args, message):
    result = run(WHEELS_SH, "--dry-run", *args, env=environment(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stdout == ""  # refused before any plan


def test_wheel_plan_replaces_only_its_own_folder(tmp_path):
    source, out = tmp_path / "source", tmp_path / "elsewhere"
    source.mkdir()
    (source / SMALL_WHEEL).write_bytes(b"x" * 100)
    out.mkdir()
    (out / "keep.txt").write_text("not ours")
    result = run(WHEELS_SH, "--from", str(source), "--out", str(out), env=environment(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and "was not written by gpu_wheels.sh" in result.stderr
    assert tree(out) == ["keep.txt"]


def test_wheels_are_split_carried_received_joined_and_checked(tmp_path):
    mib = 1024 * 1024
    source = tmp_path / "source"
    source.mkdir()
    big, small = os.urandom(2 * mib + mib // 2), os.urandom(mib // 4)
    (source / ORT_WHEEL).write_bytes(big)
    (source / SMALL_WHEEL).write_bytes(small)
    out, env = tmp_path / "wheels", environment(tmp_path)

    made = run(WHEELS_SH, "--from", str(source), "--chunk-mib", "1", "--out", str(out), env=env, cwd=tmp_path)

    assert made.returncode == 0, made.stderr
    calls = sorted(out.glob("call-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [c.name for c in calls] == ["call-1", "call-2", "call-3"]  # 1 + 1 + (0.5 + 0.25) MiB
    for call in calls:
        assert sum(p.stat().st_size for p in call.iterdir() if p.name != "MANIFEST") <= mib
        assert (call / "MANIFEST").read_text() == (out / "MANIFEST").read_text()
    assert sorted(p.name for p in calls[-1].iterdir()) == sorted(["MANIFEST", SMALL_WHEEL, f"{ORT_WHEEL}.part-02"])
    manifest = (out / "MANIFEST").read_text().splitlines()
    assert [line.split()[1:] for line in manifest] == [[str(len(big)), "3", ORT_WHEEL], [str(len(small)), "0", SMALL_WHEEL]]
    plan = (out / "PLAN.txt").read_text()
    assert f"--receive {out}/call-1 --check" in plan and f"--receive {out}/call-2\n" in plan
    assert f"--receive {out}/call-3 --run --out \"$OUT\"" in plan
    assert plan in made.stdout

    store = tmp_path / "store"
    for call in calls[:-1]:  # a call per folder, on the GPU machine: receive needs no GPU
        got = run(GPU_SH, "--receive", str(call), "--store", str(store), env=env, cwd=tmp_path)
        assert got.returncode == 0, got.stderr
        assert "still to carry" in got.stderr
    last = run(GPU_SH, "--receive", str(calls[-1]), "--store", str(store), env=env, cwd=tmp_path)
    assert last.returncode == 0, last.stderr
    assert f"joined {ORT_WHEEL}" in last.stderr and "all wheels are in" in last.stderr
    assert (store / "wheels" / ORT_WHEEL).read_bytes() == big
    assert (store / "wheels" / SMALL_WHEEL).read_bytes() == small

    # the wheels are for cp312: a Python of another version is told how to prepare its own
    other = tmp_path / "python"
    other.write_text("#!/bin/sh\necho cp399\n")
    other.chmod(0o755)
    refused = run(GPU_SH, "--setup-only", "--store", str(store), "--python", str(other), env=env, cwd=tmp_path)
    assert refused.returncode == NOT_READY
    assert f"{ORT_WHEEL} is for cp312 but {other} is cp399" in refused.stderr
    assert "gpu_wheels.sh --python 3.99" in refused.stderr

    # a damaged part is caught by the sha256 of the joined wheel
    damaged = tmp_path / "damaged"
    shutil.copytree(calls[1], damaged)
    part = damaged / f"{ORT_WHEEL}.part-01"
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    store2 = tmp_path / "store2"
    for call in (calls[0], damaged):
        assert run(GPU_SH, "--receive", str(call), "--store", str(store2), env=env, cwd=tmp_path).returncode == 0
    bad = run(GPU_SH, "--receive", str(calls[2]), "--store", str(store2), env=env, cwd=tmp_path)
    assert bad.returncode == NOT_READY
    assert f"{ORT_WHEEL}: joined pieces do not match its sha256" in bad.stderr
    assert not (store2 / "wheels" / ORT_WHEEL).exists()


@pytest.mark.slow
def test_the_benchmark_harness_runs_on_the_cpu(tmp_path):
    """gpu.py's whole flow on the CPU provider with the tiny presets (exports, checks, timings, report):
    a check of the harness, whose figures mean nothing."""
    import json
    import sys

    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--size", "tiny",
                             "--quick", "--out", str(out), "--models", str(tmp_path / "models"), "--budget", "600"],
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert report["status"].startswith("complete")
    checks = report["checks"]
    assert checks["clip fp32 parity"]["passed"] and checks["caption fp32 parity"]["passed"]
    assert checks["argmax on the device"]["passed"]
    assert {"fp32", "fp16"} <= set(checks["argmax on the device"])
    assert set(report["latency"]["CLIP image embedding, batch 1"]) == {"eager fp32", "eager fp16", "clipblip fp32",
                                                                       "clipblip fp16"}
    assert "clipblip fp16, argmax on the host" in report["latency"]["BLIP caption, 20 new tokens"]
    assert len(report["goals"]) == 3
    table = (out / "results.md").read_text()
    assert "RANDOM weights" in table and "## Goals" in table
