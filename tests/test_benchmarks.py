import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# The harness times seven works four to six ways (~50 s alone, far more on a busy machine): `make test-all`, not `make test`.
pytestmark = pytest.mark.slow


def test_quick_benchmark_writes_json_table_and_chart(tmp_path):
    """The harness on tiny presets (timings here are not benchmarks; only the output is checked)."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--repeat", "1",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert {"cpu", "cpu_flags", "cpu_class", "threads", "provider", "torch", "onnxruntime",
            "transformers"} <= set(report["environment"])
    ran_on = report["backends"]  # where each graph ran, with `auto`
    assert ran_on["clipblip clip int8"]["image_tower"].startswith("CPUExecutionProvider, int8 (")
    auto_openvino = "OpenVINO" in ran_on["clipblip caption int8"]["image_tower"]
    assert len(report["latency"]) == 7  # CLIP image bs1 and bs32, CLIP text, caption greedy and beam, VQA, ITM
    base = ["eager fp32", "eager bf16 autocast", "clipblip fp32", "clipblip int8"]
    openvino = importlib.util.find_spec("openvino") is not None
    for work, variants in report["latency"].items():
        plain = [v for v in variants if not v.endswith(" + OpenVINO")]  # --provider openvino beside auto
        assert plain[:4] == base
        if work.startswith("BLIP caption"):
            assert "clipblip int4" in variants
        if work.startswith("BLIP") and openvino and not auto_openvino:
            assert "clipblip int8 + OpenVINO" in variants  # int8 BLIP folders carry the image tower's copy
        if work.startswith("CLIP"):
            assert plain == base + ["clipblip bf16"]  # bf16: OpenVINO where the CPU computes it, else fp32
            assert ("clipblip fp32 + OpenVINO" in variants) == openvino  # the fp32 plan: --provider openvino only
        assert variants["eager fp32"]["ratio_to_eager_fp32"] == 1.0
        assert all(v["p50_ms"] > 0 and v["p95_ms"] >= v["p50_ms"] * 0.999 for v in variants.values())
    cold = report["cold_start"]
    assert {"eager fp32", "clipblip fp32", "clipblip int8", "clipblip int4"} <= set(cold)
    assert ("clipblip int8 + OpenVINO" in cold) == openvino
    assert all(r["peak_rss_mb"] > 10 and r["wall_s"] > 0 for r in cold.values())
    assert all(r["first_load_wall_s"] > 0 for r in cold.values())  # the first load on this machine, checks run
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n| ") >= 28 + 4 and "random weights" in table
    with Image.open(tmp_path / "chart.png") as chart:
        assert chart.size[0] > 600
