"""CLIP-like models with ONNX Runtime: image and text embeddings, similarity, zero-shot classification.

CLIP, Chinese-CLIP, SigLIP and OpenCLIP folders run the same code: what differs between them (how texts are
padded, how a label's probability is scored, the default prompt) is in each folder's manifest.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from ..defaults import MAX_BATCH
from ..errors import ModelLoadError, TextInputError, UsageError
from ..families import FAMILIES, task_graphs
from ..manifest import Manifest
from .base import FolderEngine
from .images import DEFAULT_MAX_PIXELS, ImageInput, as_images, describe
from .items import (as_texts, attention_names, batches, check_finite, finish, finite_attention, l2_normalize,
                    softmax)

__all__ = ["label_prompts", "ClipEngine", "ChineseClipEngine", "SiglipEngine", "OpenClipEngine", "label_probabilities"]

SCORINGS = ("softmax", "sigmoid")
TEXT_BUCKET = 8  # text lengths on OpenVINO are padded up to a multiple of this (ClipEngine.text_bucket)


class ClipEngine(FolderEngine):
    """Runs an exported CLIP model folder. Build it with :meth:`from_dir`.

    Batch methods take a list of items (a single path, PIL image, array, encoded ``bytes`` or text is
    one item). When some items fail, the others still get results: the method raises PartialFailure
    carrying them (NaN rows or None where an item failed), or, with ``return_errors=True``, returns
    ``(results, {index: error})`` instead.
    """

    family = "clip"

    def __init__(self, folder: Path, manifest: Manifest, sessions: dict, max_batch: int,
                 max_image_pixels: int | None = DEFAULT_MAX_PIXELS):
        super().__init__(folder, manifest, sessions, max_batch, max_image_pixels)
        self.logit_scale = float(manifest.model["logit_scale"])
        self.logit_bias = float(manifest.model.get("logit_bias", 0.0))
        registered = FAMILIES[manifest.family]  # folders exported before these facts were written: the family's
        self.scoring = manifest.model.get("scoring", registered.scoring)
        if self.scoring not in SCORINGS:
            raise ModelLoadError(f"{folder}: manifest scoring {self.scoring!r} is not one clipblip knows "
                                 f"({', '.join(SCORINGS)})")
        self.prompt_template = manifest.model.get("prompt_template", registered.prompt_template)
        self.embed_dim = int(manifest.model["embed_dim"])

    @classmethod
    def from_dir(cls, folder: str | os.PathLike, provider: str = "auto", threads: int | None = None,
                 max_batch: int = MAX_BATCH, verify: bool = True,
                 max_image_pixels: int | None = DEFAULT_MAX_PIXELS) -> ClipEngine:
        """Load a folder written by `clipblip export` for a CLIP model.

        ``provider`` is "auto" (CUDA when available, else CPU), "cpu" or "cuda" (an error if CUDA
        is not usable: no silent fallback). ``max_batch`` bounds how many items one graph run takes;
        ``max_image_pixels`` refuses larger images before decoding them.
        """
        loaded = cls.open_folder(folder, lambda manifest: task_graphs(cls.family, manifest.tasks, manifest.towers),
                                 provider, threads, verify)
        return cls(*loaded, max_batch, max_image_pixels)

    def embed_images(self, images: Sequence[ImageInput] | ImageInput, *, return_errors: bool = False):
        """Images → float32 (N, D), rows L2-normalised, in input order (NaN rows for failed items)."""
        self.require_towers(("image",), "embedding images")
        images = as_images(images)
        out = np.full((len(images), self.embed_dim), np.nan, dtype=np.float32)
        errors: dict = {}
        for rows, pixel_values in self.usable_images(images, errors):  # pixel_values (usable, 3, H, W)
            out[rows] = self.sessions["image_tower"].run(["image_embeds"], {"pixel_values": pixel_values})[0]
            check_finite(out[rows], rows, errors, "image embedding")
        return finish(l2_normalize(out), errors, len(images), return_errors)

    def embed_texts(self, texts: Sequence[str] | str, *, return_errors: bool = False):
        """Texts → float32 (M, D), rows L2-normalised; long texts are truncated keeping end-of-text.
        Each text's embedding is kept in ``text_cache``, so repeated texts (labels) cost nothing."""
        self.require_towers(("text",), "embedding texts")
        texts = as_texts(texts)
        out, errors = self.text_cache.embed(texts, self._text_tower, self.embed_dim, "text embedding")
        if errors:  # a text of no tokens (possible where the tokenizer adds none, as SigLIP 2's) is named as such
            empty = [i for i, row in zip(errors, self.tokenizer.ids([texts[i] for i in errors])) if not row]
            errors.update({i: TextInputError(f"text {i} ({texts[i]!r}): gives no token for this model's tokenizer; "
                                             f"nothing to embed") for i in empty})
        return finish(out, errors, len(texts), return_errors)

    def _text_tower(self, texts: list[str]) -> np.ndarray:
        """Rows of texts → normalised embeddings; NaN for a text of no tokens where the tower takes a mask (fully
        masked, it has no meaning)."""
        rows = self.tokenizer.ids(texts)
        out = np.full((len(texts), self.embed_dim), np.nan, dtype=np.float32)
        for part in batches(len(texts), self.max_batch):
            # a text of no tokens is masked out entirely, unless the tower takes no mask (OpenCLIP: a row of padding)
            kept = [i for i in range(part.start, part.stop) if rows[i] or not self.tokenizer.attention_mask]
            if kept:
                # (batch, sequence), the sequence rounded up to a bucket where the tower runs on OpenVINO
                input_ids, attention_mask = self.tokenizer.pad([rows[i] for i in kept], self.text_bucket)
                feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
                feeds = {name: feeds[name] for name in self.text_inputs}  # OpenCLIP's towers take no mask
                out[kept] = self.sessions["text_tower"].run(["text_embeds"], feeds)[0]
        return l2_normalize(out)

    @cached_property
    def text_bucket(self) -> int:
        """Text lengths are padded up to a multiple of this (masked: the same answers) where the text tower runs on
        OpenVINO, which keeps compiled kernels per input shape: with a length of its own for every text, memory grew
        by 165 MB over the soak's 2,000 calls (tests/export/test_openvino_copies.py); in buckets of 8 it levels
        off. ONNX Runtime needs no buckets (1)."""
        from . import openvino

        tower = self.sessions.get("text_tower")
        masked = self.tokenizer.attention_mask and self.tokenizer.padding == "longest"
        return TEXT_BUCKET if masked and isinstance(tower, openvino.OpenVinoGraph) else 1

    @cached_property
    def text_inputs(self) -> list[str]:
        """The text tower's inputs, as the manifest records them."""
        return [tensor.name for tensor in self.manifest.graphs["text_tower"].inputs]

    def image_attentions(self, image: ImageInput) -> np.ndarray:
        """Attention weights of the image tower, float32 (layers, heads, tokens, tokens); class token first."""
        self.require_towers(("image",), "image attention")
        names = attention_names(self.folder, self.manifest, "image_tower")
        weights = self.sessions["image_tower"].run(names, {"pixel_values": self.preprocess([image])})
        return finite_attention(np.stack([w[0] for w in weights]), describe(image))

    def text_attentions(self, text: str) -> tuple[list[str], np.ndarray]:
        """The text's tokens and the text tower's attention weights, (layers, heads, tokens, tokens);
        padding (SigLIP pads every text to its max length) left out."""
        self.require_towers(("text",), "text attention")
        names = attention_names(self.folder, self.manifest, "text_tower")
        input_ids, attention_mask = self.tokenizer([text])
        weights = self.sessions["text_tower"].run(names, {"input_ids": input_ids, "attention_mask": attention_mask})
        kept = np.flatnonzero(input_ids[0] != self.tokenizer.pad_id) if self.tokenizer.padding == "max_length" \
            else np.arange(input_ids.shape[1])
        weights = np.stack([w[0] for w in weights])[..., kept[:, None], kept]  # (layers, heads, kept, kept)
        return self.tokenizer.tokens(input_ids[0, kept]), finite_attention(weights, repr(text))

    def similarity(self, images: Sequence[ImageInput] | ImageInput, texts: Sequence[str] | str, *,
                   return_errors: bool = False):
        """Cosine similarities, float32 (N images, M texts); NaN rows for images that failed."""
        self.require_towers(("image", "text"), "similarity")
        images = as_images(images)
        image_embeds, errors = self.embed_images(images, return_errors=True)
        text_embeds = self.embed_texts(texts)  # a text that fails fails the call: every row needs it
        return finish(image_embeds @ text_embeds.T, errors, len(images), return_errors)

    def label_probabilities(self, similarity: np.ndarray) -> np.ndarray:
        """Cosine similarities (images, labels) → each label's probability, as the family scores it."""
        return label_probabilities(similarity, self.scoring, self.logit_scale, self.logit_bias)

    def classify(self, images: Sequence[ImageInput] | ImageInput, labels: Sequence[str] | str,
                 template: str | None = None, *, return_errors: bool = False):
        """Zero-shot: per image, (label, probability) pairs best first, or None for a failed image.

        ``template`` (default: the model's ``prompt_template``) puts each label in a sentence. The
        probability is the family's (``scoring``): CLIP and Chinese-CLIP softmax logit_scale · cosine over
        the labels (they sum to 1); SigLIP scores each label on its own, sigmoid(logit_scale · cosine + logit_bias).
        """
        self.require_towers(("image", "text"), "zero-shot classification")
        template = self.prompt_template if template is None else template
        labels = as_texts(labels)
        if not labels:
            raise UsageError("labels: give at least one label")
        prompts = label_prompts(template, labels)
        images = as_images(images)
        similarity, errors = self.similarity(images, prompts, return_errors=True)
        probs = self.label_probabilities(similarity)
        ranked = [None if i in errors else sorted(zip(labels, map(float, row)), key=lambda pair: -pair[1])
                  for i, row in enumerate(probs)]
        return finish(ranked, errors, len(images), return_errors)



class ChineseClipEngine(ClipEngine):
    """Runs an exported Chinese-CLIP folder (BERT-Chinese text tower); the same API as ClipEngine."""

    family = "chinese_clip"


class SiglipEngine(ClipEngine):
    """Runs an exported SigLIP folder: texts padded to max length, each label scored by its own sigmoid."""

    family = "siglip"


class OpenClipEngine(ClipEngine):
    """Runs an exported OpenCLIP folder: open_clip's preprocessing and text cleaning, texts padded to the context
    length, softmax or sigmoid scoring, all as the manifest says."""

    family = "open_clip"


def label_prompts(template: str, labels: Sequence[str]) -> list[str]:
    """Each label put in ``template`` where its one ``{}`` is (``{{`` and ``}}`` are literal braces); a UsageError
    naming the template unless it holds exactly one plain ``{}``."""
    import string

    if not isinstance(template, str):
        raise UsageError(f"template: expected a string, got {type(template).__name__}")
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as e:  # a single { or }
        raise UsageError(f"template {template!r}: {e} (write a literal brace as '{{{{' or '}}}}')") from None
    if fields != [("", "", None)]:
        raise UsageError(f"template {template!r}: must hold exactly one '{{}}', where the label goes "
                         f"(write a literal brace as '{{{{' or '}}}}')")
    return [template.format(label) for label in labels]


def label_probabilities(similarity: np.ndarray, scoring: str, logit_scale: float, logit_bias: float = 0.0
                        ) -> np.ndarray:
    """(images, labels) cosines → probabilities: "softmax" over the labels, or "sigmoid" per label."""
    logits = logit_scale * np.asarray(similarity, dtype=np.float32)
    if scoring == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * (logits + logit_bias)))  # sigmoid, without overflow
    if scoring == "softmax":
        return softmax(logits)
    raise ValueError(f"scoring {scoring!r}: clipblip knows {', '.join(SCORINGS)}")
