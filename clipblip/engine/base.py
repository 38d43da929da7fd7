"""What every engine shares: the model folder, its checked sessions, preprocessing, tokenizer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import ModelLoadError, UsageError
from ..manifest import Manifest
from .images import DEFAULT_MAX_PIXELS, ImageInput, ImagePreprocessor
from .session import open_graph
from .text import TextTokenizer

__all__ = ["FolderEngine", "batches"]


def batches(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


class FolderEngine:
    """A loaded model folder. Subclasses name their ``family`` and which graphs they open."""

    family = ""

    def __init__(self, folder: Path, manifest: Manifest, sessions: dict, max_batch: int,
                 max_image_pixels: int | None = DEFAULT_MAX_PIXELS):
        if max_batch < 1:
            raise UsageError(f"max_batch={max_batch}: must be at least 1")
        self.folder = folder
        self.manifest = manifest
        self.sessions = sessions
        self.max_batch = max_batch
        self.preprocess = ImagePreprocessor.from_manifest(manifest.image, max_image_pixels)
        self.tokenizer = TextTokenizer.from_manifest(folder, manifest.tokenizer)

    @classmethod
    def open_folder(cls, folder: str | os.PathLike, graphs, provider: str, threads: int | None,
                    verify: bool) -> tuple[Path, Manifest, dict]:
        """The manifest and a checked session for each graph that ``graphs(manifest)`` names."""
        folder = Path(folder)
        manifest = Manifest.load(folder)
        if manifest.family != cls.family:
            raise ModelLoadError(f"{folder}: holds a {manifest.family} model, not {cls.family.upper()}")
        names: Iterable[str] = graphs(manifest)
        sessions = {name: open_graph(folder, name, manifest.graph(folder, name), provider, threads, verify)
                    for name in sorted(set(names))}
        return folder, manifest, sessions

    @property
    def providers(self) -> list[str]:
        return self.sessions["image_tower"].get_providers()

    def usable_images(self, images: Sequence[ImageInput], errors: dict) -> Iterator[tuple[list[int], np.ndarray]]:
        """Chunk by chunk: (indices of the usable images, their pixels (k, 3, H, W)); each image that
        cannot be used gets its ImageError in ``errors`` under its index."""
        for part in batches(len(images), self.max_batch):
            pixel_values, good, failed = self.preprocess.each(images[part])
            errors.update({part.start + i: e for i, e in failed.items()})
            if good:
                yield [part.start + i for i in good], pixel_values


