"""BLIP beam search (3 beams, 20 new tokens): transformers' generate() (PyTorch eager fp32) vs clipblip fp32
and int8, one process, one run, same weights, same photo, same threads; and clipblip's beams vs its greedy.

    python benchmarks/blip_beam.py [--preset blip-base] [--threads 2] [--repeat 3] [--models bench-output/models]
                                   [--out DIR]

Exports are cached under --models and reused. The fp32 beams must give transformers' tokens (checked
before timing). Random-weight presets have the real architecture: timings are honest about speed only.
Prints a markdown table and the goals; with --out, also writes results.json (with the environment) and
results.md there.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from blip_caption import eager_captioning  # benchmarks/blip_caption.py
from common import cell, environment, export_once, measured_line, median_ms, table, write_results  # benchmarks/


def exported(models: Path, preset: str, precision: str) -> Path:
    folder = models / f"{preset}-caption{'' if precision == 'fp32' else '-' + precision}"
    return export_once(f"random:{preset}", folder, task="caption", precision=precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="blip-base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--models", type=Path, default=Path("bench-output/models"))
    parser.add_argument("--out", type=Path, default=None, help="also write results.json and results.md here")
    args = parser.parse_args()

    from clipblip.engine import BlipEngine

    n, beams = args.max_new_tokens, args.beams
    image, model, generate = eager_captioning(args.preset, args.threads)

    def eager():
        return generate(n, beams)

    engines = {p: BlipEngine.from_dir(exported(args.models, args.preset, p), provider="cpu", threads=args.threads)
               for p in ("fp32", "int8")}
    ours = engines["fp32"].generate_captions([image], max_new_tokens=n, num_beams=beams)[0]
    theirs = eager()[0, 1:].tolist()
    pad = model.config.text_config.pad_token_id
    theirs = theirs[: theirs.index(pad)] if pad in theirs else theirs
    assert ours.token_ids == theirs, f"token mismatch: {ours.token_ids} vs {theirs}: the comparison would be unfair"

    results = {"eager fp32": median_ms(eager, args.repeat)}
    for precision, engine in engines.items():
        results[f"clipblip {precision}"] = median_ms(
            lambda: engine.caption([image], max_new_tokens=n, num_beams=beams), args.repeat)
        results[f"clipblip {precision} greedy"] = median_ms(
            lambda: engine.caption([image], max_new_tokens=n), args.repeat)

    base = results["eager fp32"]
    report = {"date": time.strftime("%Y-%m-%d"), "environment": environment(args.threads, "torch", "onnxruntime"),
              "model": f"random:{args.preset}", "random_weights": True, "repeat": args.repeat, "beams": beams,
              "max_new_tokens": n, "tokens_generated": len(ours.token_ids),
              "median_ms": {name: {"ms": ms, "ratio_to_eager_fp32_beams": base / ms} for name, ms in results.items()},
              "beams_over_greedy": {p: results[f"clipblip {p}"] / results[f"clipblip {p} greedy"]
                                    for p in ("fp32", "int8")},
              "int8_beams_over_eager_fp32_beams": base / results["clipblip int8"]}
    lines = [f"{measured_line(report['date'], report['environment'], 'torch', 'onnxruntime')} random:{args.preset} "
             f"(RANDOM weights: speed only), median of {args.repeat}; {beams} beams, {n} new tokens at most "
             f"({len(ours.token_ids)} generated).", ""]
    lines += table(["work", "ms", "vs eager fp32 beams"], (
        [f"{name}{'' if 'greedy' in name else f' {beams} beams'}", cell(r["ms"], 0),
         cell(r["ratio_to_eager_fp32_beams"], 2, "x")] for name, r in report["median_ms"].items()))
    lines += [""] + [f"clipblip {p}: {beams} beams cost {ratio:.2f}x greedy (goal ≤ 1.8x)"
                     for p, ratio in report["beams_over_greedy"].items()]
    lines.append(f"goal int8 beams ≥ 5x eager fp32 beams: {report['int8_beams_over_eager_fp32_beams']:.2f}x")
    print("\n".join(lines))
    if args.out:
        write_results(args.out / "results.json", report, "\n".join(lines))


if __name__ == "__main__":
    main()
