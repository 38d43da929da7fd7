"""BLIP captioning latency: transformers' generate() (PyTorch eager) vs clipblip, one process, one run.

    python benchmarks/blip_caption.py [--preset blip-base] [--threads 2] [--repeat 3] [--out DIR]

Both sides caption the same photo from a PIL image to a string, greedy, same threads. Per-token
latency is (time for 20 new tokens - time for 5) / 15, so the image tower and preprocessing cancel.
Random-weight presets have the real architecture: timings are honest about speed only. Prints a markdown
table; with --out, also writes results.json (with the environment) and results.md there.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import (cell, environment, measured_line, median_ms, sample_image, table,
                    write_results)  # benchmarks/common.py


def eager_captioning(preset: str, threads: int):
    """The photo, transformers' caption model of ``random:PRESET`` and ``generate(new_tokens, beams=1)``: its
    ``generate()`` from the PIL image (preprocessing included) to token ids, on ``threads`` threads."""
    from clipblip.export.sources import load_source

    torch.set_num_threads(threads)
    image = sample_image()
    source = load_source(f"random:{preset}", "caption")
    model, processor = source.model, source.image_processor

    def generate(new_tokens: int, beams: int = 1):
        with torch.inference_mode():
            pixel_values = processor(images=[image], return_tensors="pt")["pixel_values"]
            return model.generate(pixel_values=pixel_values, max_new_tokens=new_tokens, num_beams=beams,
                                  do_sample=False)

    return image, model, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="blip-base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write results.json and results.md here")
    args = parser.parse_args()

    from clipblip.engine import BlipEngine
    from clipblip.export import export_model

    image, _, eager = eager_captioning(args.preset, args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        export_model(f"random:{args.preset}", f"{tmp}/m", task="caption")
        engine = BlipEngine.from_dir(f"{tmp}/m", provider="cpu", threads=args.threads)
        ours = engine.generate_captions([image], max_new_tokens=20)[0]
        theirs = eager(20)[0, 1:].tolist()
        assert ours.token_ids == theirs[: len(ours.token_ids)], "token mismatch: the comparison would be unfair"
        results = {}
        for n in (5, 20):
            results[("eager", n)] = median_ms(lambda: eager(n), args.repeat)
            results[("clipblip", n)] = median_ms(lambda: engine.caption([image], max_new_tokens=n), args.repeat)

    rows = {f"caption, image → string, {n} new tokens": (results[("eager", n)], results[("clipblip", n)])
            for n in (5, 20)}
    rows["per new token (20 vs 5)"] = ((results[("eager", 20)] - results[("eager", 5)]) / 15,
                                       (results[("clipblip", 20)] - results[("clipblip", 5)]) / 15)
    report = {"date": time.strftime("%Y-%m-%d"), "environment": environment(args.threads, "torch", "onnxruntime"),
              "model": f"random:{args.preset}", "random_weights": True, "repeat": args.repeat,
              "tokens_generated_at_cap_20": len(ours.token_ids),
              "median_ms": {work: {"eager": e, "clipblip": c, "ratio": e / c} for work, (e, c) in rows.items()}}
    lines = [f"{measured_line(report['date'], report['environment'], 'torch', 'onnxruntime')} random:{args.preset} "
             f"(random weights), median of {args.repeat}; {len(ours.token_ids)} tokens generated at cap 20.", ""]
    lines += table(["work", "PyTorch eager ms", "clipblip ONNX ms", "ratio"], (
        [work, cell(r["eager"], 0 if "caption" in work else 1), cell(r["clipblip"], 0 if "caption" in work else 1),
         cell(r["ratio"], 2, "x")] for work, r in report["median_ms"].items()))
    print("\n".join(lines))
    if args.out:
        write_results(args.out / "results.json", report, "\n".join(lines))


if __name__ == "__main__":
    main()
