"""CLIP latency: PyTorch eager vs clipblip (ONNX Runtime), same process, same inputs, same threads.

    python benchmarks/clip_latency.py [--preset clip-base] [--threads 2] [--repeat 10]

Random-weight presets have the real architecture, so timings are honest about speed only.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import numpy as np
import torch


def median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="clip-base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()

    from clipblip.engine import ClipEngine
    from clipblip.export import export_model
    from clipblip.export.clip import ClipImageTower, ClipTextTower
    from clipblip.export.sources import load_source

    torch.set_num_threads(args.threads)
    source = load_source(f"random:{args.preset}")
    with tempfile.TemporaryDirectory() as tmp:
        export_model(f"random:{args.preset}", f"{tmp}/m")
        engine = ClipEngine.from_dir(f"{tmp}/m", provider="cpu", threads=args.threads)
        image_tower, text_tower = ClipImageTower(source.model).eval(), ClipTextTower(source.model).eval()
        size = source.model.config.vision_config.image_size
        rows = [f"| work | PyTorch eager ms | clipblip ONNX ms | ratio |", "|---|---|---|---|"]
        for batch in (1, 8):
            pixels = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
            tensor = torch.from_numpy(pixels)
            with torch.inference_mode():
                eager = median_ms(lambda: image_tower(tensor), args.repeat)
            onnx = median_ms(lambda: engine.sessions["image_tower"].run(None, {"pixel_values": pixels}), args.repeat)
            rows.append(f"| image tower, batch {batch} | {eager:.1f} | {onnx:.1f} | {eager / onnx:.2f}x |")
        ids, mask = engine.tokenizer(["a photo of a cat"])
        with torch.inference_mode():
            eager = median_ms(lambda: text_tower(torch.from_numpy(ids), torch.from_numpy(mask)), args.repeat)
        onnx = median_ms(lambda: engine.sessions["text_tower"].run(None, {"input_ids": ids, "attention_mask": mask}),
                         args.repeat)
        rows.append(f"| text tower, batch 1, short prompt | {eager:.1f} | {onnx:.1f} | {eager / onnx:.2f}x |")
    print(f"random:{args.preset} (random weights), {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, median of {args.repeat}, torch {torch.__version__}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
