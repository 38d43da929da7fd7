"""CLIP with ONNX Runtime: image and text embeddings, similarity, zero-shot classification."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import NumericalError, PartialFailure, UsageError, raise_item_errors
from ..manifest import Manifest
from .base import FolderEngine, batches
from .images import DEFAULT_MAX_PIXELS, ImageInput

__all__ = ["ClipEngine", "l2_normalize", "softmax"]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def check_finite(rows: np.ndarray, errors: dict, what: str) -> None:
    """Record a NumericalError for every row with NaN/Inf that has no error of its own yet."""
    bad = ~np.isfinite(rows).reshape(len(rows), -1).all(axis=1) if len(rows) else []
    for i in np.flatnonzero(bad):
        errors.setdefault(int(i), NumericalError(f"item {i}: the {what} has NaN/Inf"))


def partial_results(call):
    """Run ``call``; return (result, errors) whether or not some items failed."""
    try:
        return call(), {}
    except PartialFailure as e:
        return e.results, e.errors


def attention_names(folder: Path, manifest: Manifest, graph: str, prefix: str = "attentions_") -> list[str]:
    """The graph's attention-weight outputs, in layer order; UsageError if it was exported without them."""
    names = [n for n in manifest.graph(folder, graph).attention_outputs if n.startswith(prefix)]
    if not names:
        raise UsageError(f"{folder}: exported without attention weights; re-export with `clipblip export ... "
                         f"--attentions` to visualise attention")
    return names


class ClipEngine(FolderEngine):
    """Runs an exported CLIP model folder. Build it with :meth:`from_dir`."""

    family = "clip"

    def __init__(self, folder: Path, manifest: Manifest, sessions: dict, max_batch: int,
                 max_image_pixels: int | None = DEFAULT_MAX_PIXELS):
        super().__init__(folder, manifest, sessions, max_batch, max_image_pixels)
        self.logit_scale = float(manifest.model["logit_scale"])
        self.embed_dim = int(manifest.model["embed_dim"])

    @classmethod
    def from_dir(cls, folder: str | os.PathLike, provider: str = "auto", threads: int | None = None,
                 max_batch: int = 32, verify: bool = True,
                 max_image_pixels: int | None = DEFAULT_MAX_PIXELS) -> ClipEngine:
        """Load a folder written by `clipblip export` for a CLIP model.

        ``provider`` is "auto" (CUDA when available, else CPU), "cpu" or "cuda" (an error if CUDA
        is not usable: no silent fallback). ``max_batch`` bounds how many items one graph run takes;
        ``max_image_pixels`` refuses larger images before decoding them.

        When some images of a batch fail, the others still get results: methods then raise
        PartialFailure whose ``results`` hold NaN rows (or None) for the failed items.
        """
        loaded = cls.open_folder(folder, lambda m: ("image_tower", "text_tower"), provider, threads, verify)
        return cls(*loaded, max_batch, max_image_pixels)

    def embed_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Images → float32 (N, D), rows L2-normalised, in input order."""
        images = list(images)
        out = np.full((len(images), self.embed_dim), np.nan, dtype=np.float32)
        errors: dict = {}
        for rows, pixel_values in self.usable_images(images, errors):  # pixel_values (usable, 3, H, W)
            out[rows] = self.sessions["image_tower"].run(["image_embeds"], {"pixel_values": pixel_values})[0]
            check_finite(out[rows], errors, "image embedding")
        out = l2_normalize(out)
        raise_item_errors(errors, len(images), out)
        return out

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts → float32 (M, D), rows L2-normalised; long texts are truncated keeping end-of-text."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = self.tokenizer.ids(texts)
        out = np.empty((len(texts), self.embed_dim), dtype=np.float32)
        for part in batches(len(texts), self.max_batch):
            input_ids, attention_mask = self.tokenizer.pad(rows[part])  # (batch, sequence)
            feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
            out[part] = self.sessions["text_tower"].run(["text_embeds"], feeds)[0]
        errors: dict = {}
        check_finite(out, errors, "text embedding")
        out = l2_normalize(out)
        raise_item_errors(errors, len(texts), out)
        return out

    def image_attentions(self, image: ImageInput) -> np.ndarray:
        """Attention weights of the image tower, float32 (layers, heads, tokens, tokens); class token first."""
        names = attention_names(self.folder, self.manifest, "image_tower")
        weights = self.sessions["image_tower"].run(names, {"pixel_values": self.preprocess([image])})
        return np.stack([w[0] for w in weights])

    def text_attentions(self, text: str) -> tuple[list[str], np.ndarray]:
        """The text's tokens and the text tower's attention weights, (layers, heads, tokens, tokens)."""
        names = attention_names(self.folder, self.manifest, "text_tower")
        input_ids, attention_mask = self.tokenizer([text])
        weights = self.sessions["text_tower"].run(names, {"input_ids": input_ids, "attention_mask": attention_mask})
        return self.tokenizer.tokens(input_ids[0]), np.stack([w[0] for w in weights])

    def similarity(self, images: Sequence[ImageInput], texts: Sequence[str]) -> np.ndarray:
        """Cosine similarities, float32 (N images, M texts); NaN rows for images that failed."""
        images = list(images)
        image_embeds, errors = partial_results(lambda: self.embed_images(images))
        result = image_embeds @ self.embed_texts(texts).T
        raise_item_errors(errors, len(images), result)
        return result

    def classify(self, images: Sequence[ImageInput], labels: Sequence[str],
                 template: str = "a photo of a {}.") -> list[list[tuple[str, float]]]:
        """Zero-shot: per image, (label, probability) pairs best first; softmax of logit_scale · cosine."""
        labels = list(labels)
        if not labels:
            raise UsageError("labels: give at least one label")
        if "{}" not in template:
            raise UsageError(f"template {template!r}: must contain '{{}}' where the label goes")
        images = list(images)
        similarity, errors = partial_results(lambda: self.similarity(images, [template.format(l) for l in labels]))
        probs = softmax(self.logit_scale * similarity)
        ranked = [None if i in errors else sorted(zip(labels, map(float, row)), key=lambda pair: -pair[1])
                  for i, row in enumerate(probs)]
        raise_item_errors(errors, len(images), ranked)
        return ranked
