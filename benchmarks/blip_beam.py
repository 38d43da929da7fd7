"""BLIP beam search (3 beams, 20 new tokens): transformers' generate() (PyTorch eager fp32) vs clipblip fp32
and int8, one process, one run, same weights, same photo, same threads; and clipblip's beams vs its greedy.

    python benchmarks/blip_beam.py [--preset blip-base] [--threads 2] [--repeat 3] [--models bench-output/models]

Exports are cached under --models and reused. The fp32 beams must give transformers' tokens (checked
before timing). Random-weight presets have the real architecture: timings are honest about speed only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image
from common import cpu_name, median_ms  # benchmarks/common.py


def exported(models: Path, preset: str, precision: str) -> Path:
    from clipblip.errors import ClipblipError
    from clipblip.export import export_model
    from clipblip.manifest import Manifest

    folder = models / f"{preset}-caption{'' if precision == 'fp32' else '-' + precision}"
    try:
        Manifest.load(folder)
        return folder
    except ClipblipError:
        export_model(f"random:{preset}", folder, task="caption", precision=precision, force=folder.exists())
        return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="blip-base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--models", type=Path, default=Path("bench-output/models"))
    args = parser.parse_args()

    from matplotlib import cbook

    from clipblip.engine import BlipEngine
    from clipblip.export.sources import load_source

    torch.set_num_threads(args.threads)
    image = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    source = load_source(f"random:{args.preset}", "caption")
    model, processor = source.model, source.image_processor
    n, beams = args.max_new_tokens, args.beams

    def eager():
        with torch.inference_mode():
            pixel_values = processor(images=[image], return_tensors="pt")["pixel_values"]
            return model.generate(pixel_values=pixel_values, max_new_tokens=n, num_beams=beams, do_sample=False)

    engines = {p: BlipEngine.from_dir(exported(args.models, args.preset, p), provider="cpu", threads=args.threads)
               for p in ("fp32", "int8")}
    ours = engines["fp32"].generate_captions([image], max_new_tokens=n, num_beams=beams)[0]
    theirs = eager()[0, 1:].tolist()
    theirs = theirs[: theirs.index(model.config.text_config.pad_token_id)] if model.config.text_config.pad_token_id in theirs else theirs
    assert ours.token_ids == theirs, f"token mismatch: {ours.token_ids} vs {theirs}: the comparison would be unfair"

    results = {"eager fp32": median_ms(eager, args.repeat)}
    for precision, engine in engines.items():
        results[f"clipblip {precision}"] = median_ms(
            lambda: engine.caption([image], max_new_tokens=n, num_beams=beams), args.repeat)
        results[f"clipblip {precision} greedy"] = median_ms(
            lambda: engine.caption([image], max_new_tokens=n), args.repeat)

    print(f"random:{args.preset} (RANDOM weights: speed only), {cpu_name()}, {args.threads} threads, median of "
          f"{args.repeat}, torch {torch.__version__}; {beams} beams, {n} new tokens at most "
          f"({len(ours.token_ids)} generated)")
    print("| work | ms | vs eager fp32 beams |")
    print("|---|---|---|")
    base = results["eager fp32"]
    for name, ms in results.items():
        print(f"| {name}{'' if 'greedy' in name else f' {beams} beams'} | {ms:.0f} | {base / ms:.2f}x |")
    for precision in ("fp32", "int8"):
        ratio = results[f"clipblip {precision}"] / results[f"clipblip {precision} greedy"]
        print(f"clipblip {precision}: {beams} beams cost {ratio:.2f}x greedy (goal ≤ 1.8x)")
    print(f"goal int8 beams ≥ 5x eager fp32 beams: {base / results['clipblip int8']:.2f}x")


if __name__ == "__main__":
    main()
