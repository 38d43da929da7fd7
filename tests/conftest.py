"""Shared fixtures: tiny random CLIP checkpoints saved with save_pretrained, their exports, photos."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Two deliberately different shapes: exports must not assume ViT-B/32 sizes.
CLIP_VARIANTS = {
    "square30": dict(
        text=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
        vision=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                    image_size=30, patch_size=6),
        projection_dim=24, resize=30, crop=30,
    ),
    "crop48": dict(
        text=dict(hidden_size=40, intermediate_size=64, num_hidden_layers=3, num_attention_heads=5),
        vision=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                    image_size=48, patch_size=16),
        projection_dim=12, resize=56, crop=48,
    ),
}


@dataclass
class TinyClip:
    name: str
    checkpoint: Path  # save_pretrained directory
    exported: Path  # clipblip export of it
    model: object  # the transformers CLIPModel, reloaded from the checkpoint
    processor: object  # CLIPProcessor reloaded from the checkpoint


@pytest.fixture(scope="session")
def clip_tokenizer():
    from clipblip.export.vocab import clip_tokenizer

    return clip_tokenizer()


def save_tiny_clip(folder: Path, variant: dict, tokenizer) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    torch.manual_seed(1234)
    config = CLIPConfig(text_config=variant["text"], vision_config=variant["vision"],
                        projection_dim=variant["projection_dim"])
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": variant["resize"]},
                                              crop_size={"height": variant["crop"], "width": variant["crop"]}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@pytest.fixture(scope="session", params=sorted(CLIP_VARIANTS))
def tiny_clip(request, tmp_path_factory, clip_tokenizer) -> TinyClip:
    from transformers import CLIPModel, CLIPProcessor

    from clipblip.export import export_model

    root = tmp_path_factory.mktemp(f"clip-{request.param}")
    checkpoint = root / "checkpoint"
    save_tiny_clip(checkpoint, CLIP_VARIANTS[request.param], clip_tokenizer)
    exported = root / "exported"
    export_model(str(checkpoint), exported)
    model = CLIPModel.from_pretrained(checkpoint).eval()
    processor = CLIPProcessor.from_pretrained(checkpoint)
    return TinyClip(request.param, checkpoint, exported, model, processor)


def sample_photo(name: str) -> Path:
    from matplotlib import cbook

    return Path(cbook.get_sample_data(name, asfileobj=False))


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    """Real photos shipped by matplotlib."""
    return [sample_photo("grace_hopper.jpg"), sample_photo("Minduka_Present_Blue_Pack.png")]


@pytest.fixture(scope="session")
def odd_images(tmp_path_factory) -> dict[str, Path]:
    """Greyscale, RGBA, CMYK, palette, tiny and very elongated images, saved as files."""
    root = tmp_path_factory.mktemp("odd-images")
    base = Image.open(sample_photo("grace_hopper.jpg")).convert("RGB")
    rng = np.random.default_rng(0)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, base.size[::-1], dtype=np.uint8)))
    images = {
        "grey.png": base.convert("L"),
        "rgba.png": rgba,
        "cmyk.jpg": base.convert("CMYK"),
        "palette.png": base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64),
        "tiny_1x1.png": Image.new("RGB", (1, 1), (200, 30, 90)),
        "small_5x7.png": Image.fromarray(rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)),
        "wide_600x8.png": Image.fromarray(rng.integers(0, 256, (8, 600, 3), dtype=np.uint8)),
        "tall_9x400.png": Image.fromarray(rng.integers(0, 256, (400, 9, 3), dtype=np.uint8)),
    }
    paths = {}
    for name, image in images.items():
        image.save(root / name)
        paths[name] = root / name
    return paths


TEXTS = [
    "a photo of a cat",
    "",
    "A Woman In A Naval Uniform, smiling!",
    "emoji 🐱🚀✨ party",
    "中文：一只猫坐在垫子上",
    "  leading and trailing spaces  ",
    " ".join(["lengthy"] * 120),  # far over 77 tokens
]
