"""Chinese-CLIP and SigLIP (and CLIP beside them) against PyTorch eager, per precision, in one run.

    python benchmarks/clip_families.py [--quick] [--threads 2] [--repeat 7] [--out bench-output/families]

For each family's base preset (`random:chinese-clip-base`, `random:siglip-base`, `random:clip-base`:
the real architectures with random weights, honest about speed, never about quality): one image →
embedding; one prompt → embedding (the engine's text cache cleared each call); zero-shot classify of one
image over five new labels (the text tower runs every call on both sides). PyTorch eager fp32 is the
same random model with its own processor and tokenizer (SigLIP padded to max length, as its processor
is used), on the same inputs and threads, timed interleaved with clipblip as in run.py.
Writes results.json and results.md into --out.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from common import (cell, environment, export_once, interleaved, measured_line, sample_image, say, summarise,
                    table, write_results)  # benchmarks/common.py

FAMILIES = ("chinese_clip", "siglip", "clip")
LIBRARIES = ("torch", "transformers", "onnxruntime")
LABELS = {"chinese_clip": ["猫", "狗", "汽车", "穿制服的女人", "蓝色的礼盒"],
          "siglip": ["a cat", "a dog", "a car", "a woman in uniform", "a blue gift box"],
          "clip": ["a cat", "a dog", "a car", "a woman in uniform", "a blue gift box"]}


def preset(family: str, size: str) -> str:
    from clipblip.families import family as registry

    return f"random:{[p.name for p in registry(family).presets if p.name.endswith(size)][0]}"


def workloads(family: str, size: str, folders: dict[str, Path], threads: int, image) -> dict:
    from clipblip.export.sources import load_source
    from clipblip.families import family as registry, load_engine_class

    source = load_source(preset(family, size))
    model, processor, tokenizer = source.model, source.image_processor, source.tokenizer
    entry = registry(family)
    prompts = [entry.prompt_template.format(label) for label in LABELS[family]]
    padding = {"padding": "max_length", "max_length": tokenizer.model_max_length} if family == "siglip" else \
        {"padding": True}
    engines = {precision: load_engine_class(family).from_dir(folder, provider="auto", threads=threads)
               for precision, folder in folders.items()}

    def eager(fn):
        def call():
            with torch.inference_mode():
                return fn()
        return {"eager fp32": call}

    def image_features():
        return model.get_image_features(pixel_values=processor(images=[image], return_tensors="pt")["pixel_values"])

    def text_features(texts):
        return model.get_text_features(**tokenizer(texts, return_tensors="pt", truncation=True, **padding))

    def classify():
        image_embeds = torch.nn.functional.normalize(image_features().pooler_output, dim=-1)
        text_embeds = torch.nn.functional.normalize(text_features(prompts).pooler_output, dim=-1)
        logits = model.logit_scale.exp() * image_embeds @ text_embeds.T
        return torch.sigmoid(logits + model.logit_bias) if entry.scoring == "sigmoid" else logits.softmax(dim=-1)

    def ours(call):
        return {f"clipblip {precision}": (lambda e=engine: call(e)) for precision, engine in engines.items()}

    return {
        "image embedding, batch 1": (1, {**eager(image_features), **ours(lambda e: e.embed_images([image]))}),
        "text embedding, batch 1": (1, {**eager(lambda: text_features(prompts[:1])),
                                        **ours(lambda e: (e.text_cache.clear(), e.embed_texts(prompts[:1])))}),
        "classify, 1 image × 5 new labels": (1, {**eager(classify), **ours(
            lambda e: (e.text_cache.clear(), e.classify([image], LABELS[family])))}),
    }


def markdown(report: dict) -> str:
    lines = [f"# Chinese-CLIP, SigLIP and CLIP against PyTorch eager ({report['date']})", "",
             f"{measured_line(report['date'], report['environment'], *LIBRARIES)} Random-weight {report['size']} "
             f"presets; p50 of {report['repeat']} interleaved runs.", ""]

    def get(variants: dict, name: str, key: str = "p50_ms") -> float | None:
        return variants.get(name, {}).get(key)

    lines += table(["family", "work", "eager fp32 ms", "clipblip fp32 ms", "clipblip int8 ms", "fp32 ×", "int8 ×"], (
        [family, work, cell(get(v, "eager fp32")), cell(get(v, "clipblip fp32")), cell(get(v, "clipblip int8")),
         cell(get(v, "clipblip fp32", "ratio_to_eager_fp32"), 2),
         cell(get(v, "clipblip int8", "ratio_to_eager_fp32"), 2)]
        for family, works in report["latency"].items() for work, v in works.items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny presets, few runs: checks the harness only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per variant (default 7, quick 2)")
    parser.add_argument("--pause", type=float, default=None, help="seconds before each timed call (default 0.2)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--out", default="bench-output/families")
    parser.add_argument("--work", default=None, help="keep the exported folders here and reuse them")
    args = parser.parse_args(argv)
    size, repeat = ("tiny", args.repeat or 2) if args.quick else ("base", args.repeat or 7)
    pause = args.pause if args.pause is not None else (0.0 if args.quick else 0.2)
    torch.set_num_threads(args.threads)
    image = sample_image()
    timings: dict = {}
    with (nullcontext(args.work) if args.work else tempfile.TemporaryDirectory()) as tmp:
        for family in args.families:
            folders = {precision: export_once(preset(family, size), Path(tmp) / f"{family}-{precision}",
                                              precision=precision) for precision in ("fp32", "int8")}
            timings[family] = {}
            for work, (items, variants) in workloads(family, size, folders, args.threads, image).items():
                say(f"timing {family}: {work}")
                timings[family][work] = summarise(interleaved(variants, repeat, pause=pause), items=items)
    report = {"date": time.strftime("%Y-%m-%d"), "environment": environment(args.threads, *LIBRARIES),
              "repeat": repeat, "pause_s": pause, "size": size, "latency": timings}
    write_results(Path(args.out) / "results.json", report, markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
