import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# The harness times six models four ways (~25 s alone, far more on a busy machine): `make test-all`, not `make test`.
pytestmark = pytest.mark.slow


def test_quick_benchmark_writes_json_table_and_chart(tmp_path):
    """The harness on tiny presets (timings here are not benchmarks; only the output is checked)."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--repeat", "1",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert {"cpu", "threads", "provider", "torch", "onnxruntime", "transformers"} <= set(report["environment"])
    assert len(report["latency"]) == 6
    for variants in report["latency"].values():
        assert list(variants) == ["eager fp32", "eager bf16 autocast", "clipblip fp32", "clipblip int8"]
        assert variants["eager fp32"]["ratio_to_eager_fp32"] == 1.0
        assert all(v["p50_ms"] > 0 and v["p95_ms"] >= v["p50_ms"] * 0.999 for v in variants.values())
    cold = report["cold_start"]
    assert set(cold) == {"eager fp32", "clipblip fp32", "clipblip int8"}
    assert all(r["peak_rss_mb"] > 10 and r["wall_s"] > 0 for r in cold.values())
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n| ") >= 24 + 3 and "random weights" in table
    with Image.open(tmp_path / "chart.png") as chart:
        assert chart.size[0] > 600
