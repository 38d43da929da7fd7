"""What every engine shares: the model folder, its checked sessions, preprocessing, tokenizer."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import UsageError, WrongModelError
from ..families import TOWERS, title as family_title
from ..manifest import Manifest
from .cache import TextCache
from .checks import ensure_checked
from .images import DEFAULT_MAX_PIXELS, ImageInput, ImagePreprocessor
from .items import batches
from . import openvino
from .session import backend_for, open_graph
from .text import TextTokenizer

__all__ = ["FolderEngine", "tower_refusal", "missing_towers"]


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
        self.text_cache = TextCache()  # text embeddings by exact text, for engines that make them

    @classmethod
    def open_folder(cls, folder: str | os.PathLike, graphs, provider: str, threads: int | None,
                    verify: bool) -> tuple[Path, Manifest, dict]:
        """The manifest and a checked session for each graph that ``graphs(manifest)`` names.

        With ``verify`` (the default), files must have the manifest's hashes, and each graph must have passed its
        stored check on this machine, provider and runtime: run the first time, recorded in the user's cache
        after (:func:`clipblip.engine.checks.ensure_checked`); a graph that fails is refused (AccuracyError).
        """
        folder = Path(folder)
        manifest = Manifest.load(folder)
        if manifest.family != cls.family:
            raise WrongModelError(f"{folder}: holds a {family_title(manifest.family)} model, not "
                                  f"{family_title(cls.family)}; {wanted_export(cls.family)}")
        names = sorted(set(graphs(manifest)))
        if provider == "openvino" and all(backend_for(manifest.graph(folder, n), provider) != openvino.BACKEND
                                          for n in names):
            raise openvino.no_copy(folder)
        infos = {name: manifest.graph(folder, name) for name in names}
        # ONNX Runtime optimises each graph as it opens it, without the GIL: the graphs open side by side
        # (int8 BLIP caption, 3 graphs on 2 cores: 0.30-0.38 s one after another, 0.22-0.26 s together)
        with ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
            opened = pool.map(lambda name: open_graph(folder, name, infos[name], provider, threads, verify), names)
            sessions = dict(zip(names, opened))
        if verify:  # "auto" falls back to ONNX Runtime for an OpenVINO copy whose check fails on this machine
            fallback = (lambda name: open_graph(folder, name, manifest.graph(folder, name), "cpu", threads, verify)
                        ) if provider == "auto" else None
            ensure_checked(folder, manifest, sessions, fallback)
        return folder, manifest, sessions

    @property
    def providers(self) -> list[str]:
        """The execution providers of the image tower (of the graph opened first where it has none)."""
        session = self.sessions.get("image_tower") or next(iter(self.sessions.values()))
        return session.get_providers()

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest.tasks)

    def require(self, task: str) -> None:
        """WrongModelError unless the folder was exported for ``task``."""
        if task not in self.manifest.tasks and self.manifest.one_tower is not None:
            raise WrongModelError(tower_refusal(str(self.folder), self.manifest.towers, TOWERS, task))
        if task not in self.manifest.tasks:
            raise WrongModelError(f"{self.folder}: this {family_title(self.family)} folder does "
                                  f"{', '.join(self.manifest.tasks)}, not {task}; {wanted_export(self.family, task)}")

    def require_towers(self, towers: Sequence[str], doing: str) -> None:
        """WrongModelError, naming the folder and the tower it holds, unless it holds ``towers`` (a folder exported
        with ``--towers image|text`` holds one); ``doing`` names what needs them ("embedding images")."""
        if missing_towers(self.manifest.towers, towers):
            raise WrongModelError(tower_refusal(str(self.folder), self.manifest.towers, towers, doing))

    @property
    def precision(self) -> str:
        """The graphs' precision: one word when they share it, else each graph's."""
        kinds = {name: self.manifest.graphs[name].precision for name in self.sessions}
        if len(set(kinds.values())) == 1:
            return next(iter(kinds.values()))
        return ", ".join(f"{name} {kind}" for name, kind in kinds.items())

    def __repr__(self) -> str:
        random = ", RANDOM WEIGHTS" if self.manifest.random_weights else ""
        towers = f"towers={self.manifest.towers}, " if self.manifest.one_tower is not None else ""
        return (f"{type(self).__name__}(folder={str(self.folder)!r}, family={self.manifest.family!r}, "
                f"tasks={self.tasks}, {towers}providers={self.providers}, precision={self.precision!r}{random})")

    def usable_images(self, images: Sequence[ImageInput], errors: dict) -> Iterator[tuple[list[int], np.ndarray]]:
        """Chunk by chunk: (indices of the usable images, their pixels (k, 3, H, W)); each image that
        cannot be used gets its ImageError in ``errors`` under its index."""
        for part in batches(len(images), self.max_batch):  # images: the caller's list, as_images applied
            pixel_values, good, failed = self.preprocess.each(images[part])
            errors.update({part.start + i: e for i, e in failed.items()})
            if good:
                yield [part.start + i for i in good], pixel_values


def wanted_export(family: str, task: str | None = None) -> str:
    """What to export for a family (and task), for messages about a folder of the wrong kind."""
    from ..families import export_hint

    return f"export one with: {export_hint(family, task)}"


def missing_towers(held: Sequence[str] | None, needed: Sequence[str]) -> list[str]:
    """Those of ``needed`` that a folder holding ``held`` (a manifest's ``towers``; None: every one) lacks."""
    return [] if held is None else [tower for tower in needed if tower not in held]


def tower_refusal(where: str, held: Sequence[str], needed: Sequence[str], doing: str) -> str:
    """One line for a folder (``where``: its path, or a served model's name) without the towers ``doing`` needs:
    which it holds, which are missing, and the export that has them."""
    holds = f"holds only the {held[0]} tower (exported with --towers {held[0]})"
    if len(needed) > 1:
        return f"{where}: {holds}; {doing} needs both towers: export with --towers both (the default)"
    return f"{where}: {holds}; {doing} needs the {needed[0]} tower: export with --towers {needed[0]} or both"
