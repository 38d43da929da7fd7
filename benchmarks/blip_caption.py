"""BLIP captioning latency: transformers' generate() (PyTorch eager) vs clipblip, one process, one run.

    python benchmarks/blip_caption.py [--preset blip-base] [--threads 2] [--repeat 3]

Both sides caption the same photo from a PIL image to a string, greedy, same threads. Per-token
latency is (time for 20 new tokens - time for 5) / 15, so the image tower and preprocessing cancel.
Random-weight presets have the real architecture: timings are honest about speed only.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from PIL import Image
from common import cpu_name, median_ms  # benchmarks/common.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="blip-base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from matplotlib import cbook

    from clipblip.engine import BlipEngine
    from clipblip.export import export_model
    from clipblip.export.sources import load_source

    torch.set_num_threads(args.threads)
    image = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    source = load_source(f"random:{args.preset}", "caption")
    model, processor = source.model, source.image_processor

    def eager(n: int):
        with torch.inference_mode():
            pixel_values = processor(images=[image], return_tensors="pt")["pixel_values"]
            return model.generate(pixel_values=pixel_values, max_new_tokens=n, num_beams=1, do_sample=False)

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

    print(f"random:{args.preset} (random weights), {cpu_name()}, {args.threads} threads, "
          f"median of {args.repeat}, torch {torch.__version__}; {len(ours.token_ids)} tokens generated at cap 20")
    print("| work | PyTorch eager ms | clipblip ONNX ms | ratio |")
    print("|---|---|---|---|")
    for n in (5, 20):
        e, c = results[("eager", n)], results[("clipblip", n)]
        print(f"| caption, image → string, {n} new tokens | {e:.0f} | {c:.0f} | {e / c:.2f}x |")
    e = (results[("eager", 20)] - results[("eager", 5)]) / 15
    c = (results[("clipblip", 20)] - results[("clipblip", 5)]) / 15
    print(f"| per new token (20 vs 5) | {e:.1f} | {c:.1f} | {e / c:.2f}x |")


if __name__ == "__main__":
    main()
