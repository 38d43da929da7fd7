"""BLIP decoder step (batch 1) and cross K/V graph: fp32, dynamic int8 and weight-only MatMulNBits variants.

    python benchmarks/decoder_step.py [--model random:blip-base] [--fp32 bench-output/models/blip-base-caption]
        [--int8 bench-output/models/blip-base-caption-int8] [--work bench-output/decoder-step] [--rounds 60]
        [--threads 2] [--past 10] [--variants fp32 int8 int4-b32 ...] [--no-gate] [--out FILE.json]

A decoder step at batch 1 streams every weight once per token, so bytes per weight decide its speed. The
variants are built from the fp32 folder's decoder_step.onnx (the int8 one is the int8 folder's graph, as
``clipblip export --precision int8`` writes it; made here with the same settings when the folder is missing)
and timed interleaved in one process, one step of each per round, with the engine's session options: input
one token, a past of ``--past`` positions (decoded greedily by the fp32 step) and the cross K/V the fp32
cross_kv graph computes from a real photo's image embeddings. Reported: median and p90 ms per step, the
bytes of weights the graph holds, and (unless --no-gate) the teacher-forced gate the export applies:
top-1 agreement and least centred logit cosine against fp32 over 16 greedy steps. With --out, the results
(with the environment) go to FILE.json and the printed tables to FILE.md.
Random-weight presets have the real architecture: the timings are honest, the gate values only indicative.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from common import (cell, environment, export_once, interleaved, measured_line, sample_photo, table,
                    write_results)  # benchmarks/common.py

# name → how to make it from the fp32 graph (quantize_weight_only's keywords), or a fixed source
VARIANTS = {
    "fp32": "fp32 folder as exported (fused)",
    "int8": "the int8 folder's step (--precision int8: n8 for the step), else quantize_dynamic u8s7",
    "int4-b32": dict(bits=4, block_size=32, accuracy_level=4),  # = --precision int4 (optimize.WEIGHT_ONLY)
    "int4-b16": dict(bits=4, block_size=16, accuracy_level=4),
    "int4-b128": dict(bits=4, block_size=128, accuracy_level=4),
    "int4-b32-sym": dict(bits=4, block_size=32, accuracy_level=4, symmetric=True),
    "int4-b32-acc0": dict(bits=4, block_size=32, accuracy_level=0),
    "int4-b32-vocab8": dict(bits=4, block_size=32, accuracy_level=4, vocab_bits=8),
    "int4-b32-vocab-fp32": dict(bits=4, block_size=32, accuracy_level=4, vocab_bits=0),
    "nbits8-b32": dict(bits=8, block_size=32, accuracy_level=4),
    "nbits8-b128": dict(bits=8, block_size=128, accuracy_level=4),
    "nbits8-b32-acc0": dict(bits=8, block_size=32, accuracy_level=0),
}
DEFAULT = ["fp32", "int8", "int4-b32", "int4-b128", "int4-b32-sym", "int4-b32-vocab8", "int4-b32-vocab-fp32",
           "nbits8-b32", "nbits8-b128"]


def weight_bytes(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    def size(t) -> int:
        external = {e.key: e.value for e in t.external_data}
        if "length" in external:  # weights beside the graph (<graph>.onnx.data)
            return int(external["length"])
        return len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes

    return sum(size(t) for t in model.graph.initializer)


def paired(runs: dict[str, callable], rounds: int, baseline: str | None = None) -> dict[str, dict[str, float]]:
    """Each round calls every function once, in a fresh random order, after two warm-up rounds. Per function:
    median, p10, p90 and min ms, and (with ``baseline``) the median over rounds of its time / the baseline's time
    in the same round, a paired figure that is steadier than the medians on a machine others are using."""
    times = {name: [t * 1000 for t in seconds]
             for name, seconds in interleaved(runs, rounds, warmup=2, order="shuffle").items()}
    result = {}
    for name, t in times.items():
        result[name] = {"median_ms": statistics.median(t), "p10_ms": float(np.percentile(t, 10)),
                        "p90_ms": float(np.percentile(t, 90)), "min_ms": min(t)}
        if baseline in times:
            result[name]["paired_ratio"] = statistics.median(a / b for a, b in zip(t, times[baseline]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:blip-base")
    parser.add_argument("--fp32", type=Path, default=Path("bench-output/models/blip-base-caption"))
    parser.add_argument("--int8", type=Path, default=Path("bench-output/models/blip-base-caption-int8"))
    parser.add_argument("--work", type=Path, default=Path("bench-output/decoder-step"))
    parser.add_argument("--variants", nargs="+", default=DEFAULT, choices=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--past", type=int, default=10)
    parser.add_argument("--no-gate", action="store_true", help="skip the teacher-forced gate values")
    parser.add_argument("--no-cross", action="store_true", help="skip the cross_kv graph's timings")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here (and the tables beside it, .md)")
    args = parser.parse_args()

    from clipblip.engine import BlipEngine
    from clipblip.engine.session import session_options
    from clipblip.export.optimize import quantize_weight_only
    from clipblip.manifest import Manifest

    random.seed(0)
    manifest = Manifest.load(export_once(args.model, args.fp32, task="caption"))
    fp32_step = args.fp32 / manifest.graphs["decoder_step"].file
    fp32_cross = args.fp32 / manifest.graphs["cross_kv"].file
    assert manifest.graphs["decoder_step"].precision == "fp32", f"{args.fp32} is not an fp32 export"
    args.work.mkdir(parents=True, exist_ok=True)

    def dynamic_int8(src: Path, dst: Path) -> Path:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        if not dst.exists():
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # u8s7: exact everywhere
        return dst

    paths: dict[str, Path] = {}
    for name in args.variants:
        if name == "fp32":
            paths[name] = fp32_step
        elif name == "int8":
            folder = args.int8 / "decoder_step.int8.onnx"
            paths[name] = folder if folder.exists() else dynamic_int8(fp32_step, args.work / "decoder_step.int8.onnx")
        else:
            paths[name] = args.work / f"decoder_step.{name}.onnx"
            if not paths[name].exists() or paths[name].stat().st_mtime < fp32_step.stat().st_mtime:
                print(f"making {name}")
                quantize_weight_only(fp32_step, paths[name], **VARIANTS[name])

    options = session_options(args.threads)
    sessions = {name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                for name, p in paths.items()}
    reference = ort.InferenceSession(str(fp32_step), options, providers=["CPUExecutionProvider"])

    # cross K/V of a real photo (fp32 image tower and cross_kv graph), and a past decoded greedily by fp32
    engine = BlipEngine.from_dir(args.fp32, provider="cpu", threads=args.threads)
    states = engine.image_embeds([sample_photo()]).astype(np.float32)
    cross_session = ort.InferenceSession(str(fp32_cross), options, providers=["CPUExecutionProvider"])
    cross_names = [o.name for o in cross_session.get_outputs()]
    cross = dict(zip(cross_names, cross_session.run(cross_names, {"encoder_hidden_states": states})))
    dims = manifest.model["decoder"]
    past_names = [f"{k}_{i}" for i in range(dims["layers"]) for k in ("past_key", "past_value")]
    outputs = ["logits", *(f"{k}_{i}" for i in range(dims["layers"]) for k in ("present_key", "present_value"))]
    past = {n: np.zeros((1, dims["heads"], 0, dims["head_dim"]), np.float32) for n in past_names}
    token = np.array([[manifest.model["generation"]["bos_id"]]], dtype=np.int64)
    for _ in range(args.past):
        logits, *present = reference.run(outputs, {"input_ids": token, **past, **cross})
        past, token = dict(zip(past_names, present)), logits.argmax(-1)[:, None].astype(np.int64)
    feeds = {"input_ids": token, **past, **cross}
    cross_bytes = sum(v.nbytes for v in cross.values())

    print(f"timing {len(sessions)} decoder steps, {args.rounds} rounds")
    step_times = paired({name: (lambda s=s: s.run(outputs, feeds)) for name, s in sessions.items()}, args.rounds,
                        baseline="int8")

    gates = {}
    if not args.no_gate:
        from clipblip.engine.checks import gate_of, run_check
        from clipblip.export.blip import graph_specs
        from clipblip.export.checks import build_check, check_entry, stored
        from clipblip.export.convert import graph_info
        from clipblip.export.sources import load_source

        spec = next(s for s in graph_specs(load_source(args.model, "caption")) if s.name == "decoder_step")
        check = stored(build_check(spec, fp32_step), lossy=True)  # the gate the folder stores for its step
        info = graph_info(spec, fp32_step, {})
        info.check = check_entry(spec)
        for name, session in sessions.items():
            if name != "fp32":
                record = run_check(session, check, gate_of(info, lossy=True), info)["teacher_forced"]
                gates[name] = {k: record.get(k) for k in ("top1_agreement", "exact_top1_agreement", "least_cosine",
                                                          "passed")}

    cross_times = {}
    if not args.no_cross:
        cross_paths = {"fp32": fp32_cross}
        cross_int8 = args.int8 / "cross_kv.int8.onnx"
        cross_paths["int8"] = (cross_int8 if cross_int8.exists()
                               else dynamic_int8(fp32_cross, args.work / "cross_kv.int8.onnx"))
        cross_paths["int4-b32"] = args.work / "cross_kv.int4-b32.onnx"
        if not cross_paths["int4-b32"].exists():
            quantize_weight_only(fp32_cross, cross_paths["int4-b32"], **VARIANTS["int4-b32"])
        cross_sessions = {n: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                          for n, p in cross_paths.items()}
        print(f"timing {len(cross_sessions)} cross_kv graphs")
        cross_times = paired({n: (lambda s=s: s.run(cross_names, {"encoder_hidden_states": states}))
                              for n, s in cross_sessions.items()}, max(5, args.rounds // 6), baseline="int8")
        cross_times = {n: {**t, "weight_mb": weight_bytes(cross_paths[n]) / 1e6} for n, t in cross_times.items()}

    env = environment(args.threads, "onnxruntime", "onnx", provider="CPUExecutionProvider")
    date = time.strftime("%Y-%m-%d")
    lines = [f"{measured_line(date, env, 'onnxruntime')} {args.model} (random weights), CPUExecutionProvider; batch 1, "
             f"past {args.past}, cross K/V {cross_bytes / 1e6:.1f} MB fed per step; median of {args.rounds} "
             f"interleaved rounds.", ""]
    rows = {}
    for name in sessions:
        rows[name] = {**step_times[name], "weight_mb": weight_bytes(paths[name]) / 1e6, "how": VARIANTS[name],
                      **gates.get(name, {})}

    def top1(g: dict) -> str:
        return (f"{g['top1_agreement']:.3f} ({g['exact_top1_agreement']:.3f} exact)"
                if g.get("top1_agreement") is not None else "—")

    lines += table(["decoder step", "median ms", "p10 ms", "min ms", "× int8 (paired)", "weights MB",
                    "top-1 agreement", "least logit cosine"], (
        [name, cell(r["median_ms"], 2), cell(r["p10_ms"], 2), cell(r["min_ms"], 2), cell(r.get("paired_ratio"), 2),
         cell(r["weight_mb"], 0), top1(r), cell(r.get("least_cosine"), 4)] for name, r in rows.items()))
    if cross_times:
        lines += [""] + table([f"cross_kv graph ({states.shape[1]} tokens)", "median ms", "p10 ms", "min ms",
                               "× int8 (paired)", "weights MB"], (
            [name, cell(t["median_ms"], 2), cell(t["p10_ms"], 2), cell(t["min_ms"], 2), cell(t["paired_ratio"], 2),
             cell(t["weight_mb"], 0)] for name, t in cross_times.items()))
    print("\n".join(lines))
    if args.out:
        write_results(args.out, {"date": date, "environment": env, "model": args.model, "random_weights": True,
                                 "past": args.past, "rounds": args.rounds, "decoder_step": rows,
                                 "cross_kv": cross_times}, "\n".join(lines))


if __name__ == "__main__":
    main()
