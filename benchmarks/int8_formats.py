"""int8 formats per graph: accuracy on each graph's stored check and speed, on this CPU.

    python benchmarks/int8_formats.py [--models random:clip-base random:blip-base] [--work bench-output/int8-formats]
        [--rounds 20] [--threads 2] [--no-time] [--out FILE.json]
    tools/on-avx2 .venv/bin/python benchmarks/int8_formats.py --no-time   # the same graphs on AVX2 kernels

For every graph of an fp32 export (made in --work when missing), the int8 formats of
clipblip.export.optimize.INT8_FORMATS (u8s7, n8, u8u8) and, for comparison only, the signed 8-bit weights
that clipblip no longer writes (s8), are built from the fp32 graph once and kept in --work. Each is run on the
graph's stored check (its gate inputs and fp32 outputs, as `clipblip verify` runs them): least cosine to fp32
and the gate. With timing, batch-1 inputs of the check's first case are timed interleaved, one run of each
variant per round after a short pause (so that no session's spinning threads slow the next), with the engine's
session options. Run it natively, then under tools/on-avx2 with --no-time: formats whose integer products are
exact give the same cosines on both; s8 does not. Random-weight presets: the timings are honest, the cosines
only indicative of trained weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import cpu_class, cpu_flags, cpu_name  # noqa: E402  benchmarks/common.py

VARIANTS = ("fp32", "s8", "u8s7", "n8", "u8u8")


def build(fp32: Path, variant: str, out: Path) -> Path | None:
    """The graph ``fp32`` in ``variant`` at ``out`` (made once, as export makes it); None where the format does not
    apply. s8 (full 8-bit signed weights) is made with export's settings but for the range, for comparison."""
    from clipblip.export import optimize

    if out.exists():
        return out
    formats = {**optimize.INT8_FORMATS, "s8": {**optimize.INT8_FORMATS["u8s7"], "reduce_range": False,
                                              "weights": "int8 per output channel, full range"}}
    record = optimize.write_int8(fp32, out, variant, formats)
    return out if record.get("written", True) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["random:clip-base", "random:blip-base"])
    parser.add_argument("--work", type=Path, default=Path("bench-output/int8-formats"))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-time", action="store_true", help="accuracy only (under tools/on-avx2)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import onnxruntime as ort

    from clipblip.engine.checks import _load, gate_of, run_check
    from clipblip.engine.session import session_options
    from clipblip.manifest import Manifest

    rows = []
    for model in args.models:
        folder = args.work / model.replace("random:", "").replace("/", "_")
        if not (folder / "manifest.json").exists():
            from clipblip.export import export_model

            print(f"exporting {model} (fp32) to {folder}", flush=True)
            export_model(model, folder, task="caption" if "blip" in model else None)
        manifest = Manifest.load(folder)
        for graph, info in manifest.graphs.items():
            fp32 = folder / info.file
            check = _load(folder, graph, info)
            sessions = {}
            for variant in VARIANTS:
                path = fp32 if variant == "fp32" else build(fp32, variant, args.work / f"{folder.name}.{graph}.{variant}.onnx")
                if path is not None:
                    sessions[variant] = ort.InferenceSession(str(path), session_options(args.threads),
                                                             providers=["CPUExecutionProvider"])
            row = {"model": model, "graph": graph, "gate": info.check["cosine"], "variants": {}}
            for variant, session in sessions.items():
                record = run_check(session, check, gate_of(info, lossy=True), info)
                row["variants"][variant] = {"least_cosine": min(record["measured"].values()),
                                            "passes_gate": record["passed"]}
                if "teacher_forced" in record:
                    t = record["teacher_forced"]
                    row["variants"][variant]["teacher"] = {k: t.get(k) for k in ("top1_agreement", "least_cosine")}
            if not args.no_time:
                first = {key.split("/", 2)[2]: value[:1].astype(np.float32) if value.dtype == np.float16 else value[:1]
                         for key, value in check.items() if key.startswith("case0/in/")}
                times = {v: [] for v in sessions}
                for session in sessions.values():
                    session.run(None, first)
                for _ in range(args.rounds):
                    for variant, session in sessions.items():
                        time.sleep(0.05)
                        start = time.perf_counter()
                        session.run(None, first)
                        times[variant].append((time.perf_counter() - start) * 1000)
                for variant, t in times.items():
                    row["variants"][variant]["median_ms"] = round(statistics.median(t), 2)
                row["input"] = {k: list(v.shape) for k, v in first.items() if not k.startswith(("past_", "cross_"))}
            rows.append(row)
            print(json.dumps(row), flush=True)

    report = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cpu_flags": cpu_flags(), "cpu_class": cpu_class(),
              "threads": args.threads, "onnxruntime": ort.__version__, "timed": not args.no_time, "rows": rows}
    lines = [f"{report['date']}, {report['cpu']} ({report['cpu_class']}: {' '.join(report['cpu_flags'])}), "
             f"{args.threads} threads, onnxruntime {ort.__version__}; least cosine to fp32 on the stored check"
             + ("; batch-1 median ms" if not args.no_time else ""), "",
             "| model | graph | gate | " + " | ".join(VARIANTS) + " |", "|---|---|---|" + "---|" * len(VARIANTS)]
    for row in rows:
        cells = []
        for variant in VARIANTS:
            v = row["variants"].get(variant)
            if v is None:
                cells.append("—")
                continue
            cell = f"{v['least_cosine']:.5f}" + ("" if v["passes_gate"] else " ✗")
            cells.append(cell + (f", {v['median_ms']} ms" if "median_ms" in v else ""))
        lines.append(f"| {row['model']} | {row['graph']} | {min(row['gate'].values())} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
