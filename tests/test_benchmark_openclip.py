"""benchmarks/openclip.py without running it (a run exports full-size models: minutes): its help, and its table from a
made-up report."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "openclip.py"


def load_script():
    sys.path.insert(0, str(SCRIPT.parent))  # it imports benchmarks/common.py as `common`
    try:
        spec = importlib.util.spec_from_file_location("bench_openclip", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_help_names_the_options_and_imports_nothing_heavy():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for option in ("--archs", "--threads", "--repeat", "--quick", "--out"):
        assert option in done.stdout


def test_markdown_has_a_table_per_architecture_and_names_the_skipped():
    bench = load_script()
    timed = {"p50_ms": 100.0, "ratio_to_eager_fp32": 1.0}
    variants = {bench.EAGER: timed, "clipblip fp32": {"p50_ms": 50.0, "ratio_to_eager_fp32": 2.0},
                "clipblip int8": {"p50_ms": 25.0, "ratio_to_eager_fp32": 4.0}}
    agree = {"clipblip fp32": {"max_abs_diff": 1e-6, "cosine": 1.0}, "clipblip int8": {"max_abs_diff": 1e-2,
                                                                                        "cosine": 0.999}}
    report = {
        "date": "2026-12-04", "repeat": 7, "pause_s": 0.2, "command": "python benchmarks/openclip.py",
        "environment": {"cpu": "Some CPU", "cpu_flags": ["avx2"], "cpu_class": "avx2", "cores": 2, "threads": 2,
                        "python": "3.12", "clipblip": "0", "commit": "abc", "torch": "2", "open_clip": "3",
                        "timm": "1", "onnxruntime": "1"},
        "architectures": {
            "vit-b-32": {"preset": "random:openclip-vit-b-32", "architecture": "ViT-B-32",
                         "exports": {"fp32": {"seconds": 40.0, "reused": False},
                                     "int8": {"seconds": 70.0, "reused": True}},
                         "notes": {"folded_modules": 0, "parameters_m": 151.3, "context_length": 77},
                         "latency": {work: variants for work in bench.WORKS},
                         "parity_to_eager_fp32": {work: agree for work in bench.WORKS}, "errors": {},
                         "other_processes_cores": 0.0, "timing_s": 10.0},
            "vit-b-16-siglip": {"preset": "random:openclip-vit-b-16-siglip", "skipped": "ModelSourceError: no"},
        },
    }
    text = bench.markdown(report)
    assert "## ViT-B-32" in text and "RANDOM" in text and "Some CPU" in text
    assert "| image embedding, batch 1 | 100.0 | 50.0 | 25.0 | 2.00× | 4.00× |" in text
    assert "1.0e-02 / 0.999000" in text
    assert "`random:openclip-vit-b-16-siglip`: ModelSourceError: no" in text
