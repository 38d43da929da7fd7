import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"


VARIANTS = ["transformers eager fp32", "optimum-onnx fp32", "optimum-onnx int8 (avx512_vnni dynamic)",
            "clipblip fp32", "clipblip int8"]


# Exports a tiny CLIP three times (clipblip fp32/int8, optimum-onnx) in two environments: `make test-all`.
@pytest.mark.slow
@pytest.mark.skipif(not PEERS_PYTHON.exists(),
                    reason=".venv-peers (optimum-onnx's own environment) is missing: run `make peers-venv`")
def test_quick_peers_benchmark_writes_json_and_table(tmp_path):
    """The side-by-side harness on random:clip-tiny (timings here are not benchmarks; only the output is checked)."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers" / "classify.py"), "--quick",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    env = report["environment"]
    assert env["cpu"] and env["threads"] == 2 and isinstance(env["cpu_flags"], list)
    assert {"clipblip", "commit", "onnxruntime", "torch", "transformers", "eager_processor"} <= set(env)  # ours
    assert {"optimum-onnx", "optimum", "onnxruntime", "torch", "transformers"} <= set(env["peer"])
    assert env["peer"]["transformers"] < "4.58"  # optimum-onnx's pin: the peer really ran in its own venv
    assert report["random_weights"] is True and report["model"] == "random:clip-tiny"
    latency = report["latency"]
    assert list(latency)[:5] == VARIANTS
    assert set(latency) - set(VARIANTS) <= {"clipblip fp32, labels not cached", "clipblip int8, labels not cached"}
    for name, r in latency.items():
        assert r["samples"] == 2 and r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"] * 0.999, name
        assert set(r["probs"]) == {"cat", "dog", "car"} and abs(sum(r["probs"].values()) - 1) < 1e-4, name
        assert r["top_label"] in r["probs"]
    assert latency["transformers eager fp32"]["ratio_to_eager_fp32"] == 1.0
    # same weights on every side: the fp32 paths agree with eager
    for name in ("optimum-onnx fp32", "clipblip fp32"):
        assert latency[name]["max_abs_prob_diff_vs_eager"] < 1e-3, name
    assert {c["clipblip"] for c in report["versus_optimum"]} >= {"clipblip fp32", "clipblip int8"}
    table = (tmp_path / "results.md").read_text()
    assert env["cpu"] in table and "random weights" in table and "optimum-onnx" in table
    assert table.count("\n| ") == 1 + len(latency) + 1 + len(report["versus_optimum"])  # headers + rows


def test_missing_peers_venv_is_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers" / "classify.py"), "--quick",
                             "--peers-python", str(tmp_path / "nowhere" / "python"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "make peers-venv" in result.stderr
