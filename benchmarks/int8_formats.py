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
import time
from pathlib import Path

import numpy as np
from common import (commit_text, environment, export_once, interleaved, machine_text, table,
                    write_results)  # benchmarks/common.py

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
        folder = export_once(model, args.work / model.replace("random:", "").replace("/", "_"),
                             task="caption" if "blip" in model else None)
        manifest = Manifest.load(folder)
        for graph, info in manifest.graphs.items():
            fp32 = folder / info.file
            check = _load(folder, graph, info)
            sessions = {}
            for variant in VARIANTS:
                path = (fp32 if variant == "fp32"
                        else build(fp32, variant, args.work / f"{folder.name}.{graph}.{variant}.onnx"))
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
                times = interleaved({v: (lambda s=s: s.run(None, first)) for v, s in sessions.items()}, args.rounds,
                                    pause=0.05)
                for variant, t in times.items():
                    row["variants"][variant]["median_ms"] = round(statistics.median(t) * 1000, 2)
                row["input"] = {k: list(v.shape) for k, v in first.items() if not k.startswith(("past_", "cross_"))}
            rows.append(row)
            print(json.dumps(row), flush=True)

    env = environment(args.threads, "onnxruntime")
    report = {"date": time.strftime("%Y-%m-%d"), "environment": env, "timed": not args.no_time, "rows": rows}
    lines = [f"{report['date']}, {machine_text(env)}, {args.threads} threads, onnxruntime {env['onnxruntime']}, "
             f"clipblip at {commit_text(env)}; least cosine to fp32 on the stored check"
             + ("; batch-1 median ms" if not args.no_time else ""), ""]
    cells_by_row = []
    for row in rows:
        cells = []
        for variant in VARIANTS:
            v = row["variants"].get(variant)
            if v is None:
                cells.append("—")
                continue
            cell = f"{v['least_cosine']:.5f}" + ("" if v["passes_gate"] else " ✗")
            cells.append(cell + (f", {v['median_ms']} ms" if "median_ms" in v else ""))
        cells_by_row.append([row["model"], row["graph"], min(row["gate"].values()), *cells])
    lines += table(["model", "graph", "gate", *VARIANTS], cells_by_row)
    print("\n".join(lines))
    if args.out:
        write_results(args.out, report, "\n".join(lines))


if __name__ == "__main__":
    main()
