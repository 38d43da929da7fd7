"""What test modules share: sample inputs, small utilities, and reference computations with transformers.

Fixtures live in conftest.py; test modules import plain names from here, never from conftest.py or from
another test module. torch is imported inside the functions that need it, so the pure helpers are cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

def run_cli(capsys, *argv):
    """``clipblip ARGV`` in this process: (exit code, stdout, stderr)."""
    from clipblip.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- Sample inputs -----------------------------------------------------------------------------------

TEXTS = [
    "a photo of a cat",
    "",
    "A Woman In A Naval Uniform, smiling!",
    "emoji 🐱🚀✨ party",
    "中文：一只猫坐在垫子上",
    "  leading and trailing spaces  ",
    " ".join(["lengthy"] * 120),  # far over 77 tokens
]

BLIP_QUESTIONS = ["what is in the picture?", "how many pencils are there in the blue box?", "is it red?",
                  "what colour?"]

GENERATION_CAP = 8  # max_new_tokens in the parity tests

# The demo's model sources swapped for tiny random presets (the real demo falls back to the *-base presets).
TINY_SOURCES = {
    "clip": (("nobody/not-cached-clip", None), ("random:clip-tiny", None)),
    "chinese_clip": (("random:chinese-clip-tiny", None),),
    "caption": (("random:blip-tiny", "caption"),),
    "vqa": (("random:blip-tiny", "vqa"),),
    "itm": (("random:blip-tiny", "itm"),),
}


def varied_images(photos: list[Path]) -> list[Image.Image]:
    """Four images that a random BLIP tells apart: two photos, a flat colour, noise."""
    rng = np.random.default_rng(0)
    return [Image.open(photos[0]), Image.open(photos[1]), Image.new("RGB", (40, 30), (200, 10, 10)),
            Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8))]


def end_lengths(generated, eos_id: int) -> list[int | None]:
    """For each generated row, the index of its first ``eos_id``, or None when it never ends."""
    rows = generated.tolist()
    return [row.index(eos_id) if eos_id in row else None for row in rows]


# --- Reference computations with transformers, for parity tests ---------------------------------------


def reference_image_embeddings(model, processor, images) -> np.ndarray:
    """transformers' normalised get_image_features on ``images`` (paths or PIL images)."""
    import torch

    pil = [Image.open(i) if not isinstance(i, Image.Image) else i for i in images]
    pixel_values = processor.image_processor(images=pil, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixel_values)
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(feats, dim=-1).numpy()


def reference_text_embeddings(model, tokenizer, texts) -> np.ndarray:
    """transformers' normalised get_text_features, tokenised as CLIPProcessor does (truncate at 77)."""
    import torch

    inputs = tokenizer(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(feats, dim=-1).numpy()


def pickled_copy(checkpoint, folder):
    """The checkpoint with its safetensors weights replaced by a pickled pytorch_model.bin."""
    import torch
    from safetensors.torch import load_file

    folder.mkdir()
    for f in checkpoint.iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(checkpoint / "model.safetensors"), folder / "pytorch_model.bin")
    return folder


def assert_pixels_match(exported, image_processor, paths) -> None:
    """The engine's preprocessing, built from the manifest, within 1e-5 of the transformers processor."""
    from clipblip.engine import ImagePreprocessor
    from clipblip.manifest import Manifest

    preprocess = ImagePreprocessor.from_manifest(Manifest.load(exported).image)
    for path in paths:
        with Image.open(path) as image:
            ref = image_processor(images=image, return_tensors="np")["pixel_values"][0]
            got = preprocess([image])[0]
        assert got.shape == ref.shape, path.name
        assert np.abs(got - ref).max() <= 1e-5, path.name


def make_videos_module():
    """tools/make_videos.py as a module (the script that makes the videos of known scenes; PyAV)."""
    import importlib.util
    import sys

    if "make_videos" not in sys.modules:
        root = Path(__file__).resolve().parents[1]
        spec = importlib.util.spec_from_file_location("make_videos", root / "tools" / "make_videos.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["make_videos"] = module
        spec.loader.exec_module(module)
    return sys.modules["make_videos"]
