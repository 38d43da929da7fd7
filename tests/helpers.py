"""Reference computations with transformers, for parity tests."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def reference_image_embeddings(model, processor, images) -> np.ndarray:
    """transformers' normalised get_image_features on ``images`` (paths or PIL images)."""
    pil = [Image.open(i) if not isinstance(i, Image.Image) else i for i in images]
    pixel_values = processor.image_processor(images=pil, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixel_values)
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(feats, dim=-1).numpy()


def reference_text_embeddings(model, tokenizer, texts) -> np.ndarray:
    """transformers' normalised get_text_features, tokenised as CLIPProcessor does (truncate at 77)."""
    inputs = tokenizer(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(feats, dim=-1).numpy()


def pickled_copy(checkpoint, folder):
    """The checkpoint with its safetensors weights replaced by a pickled pytorch_model.bin."""
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
