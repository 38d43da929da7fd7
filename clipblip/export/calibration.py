"""The inputs NNCF calibrates a static int8 graph on: the user's images and texts (``export --calibration DIR``), run
through the folder's own preprocessing and tokenizer.

There is no default set: static int8 fixes each activation's range at export, and ranges taken from the graphs' own
sample inputs (noise images, random tokens) passed the stored check (noise too) yet gave a photo cosine 0.955 to fp32
(tiny Chinese-CLIP): without ``--calibration`` an int8 folder keeps ONNX Runtime's dynamic int8 alone, whose ranges
are measured on each input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..engine.images import ImagePreprocessor
from ..engine.text import TextTokenizer
from ..errors import UsageError
from ..inputs import IMAGE_SUFFIXES
from .specs import GraphSpec

__all__ = ["Calibration", "MAX_ITEMS"]

MAX_ITEMS = 300  # images, and texts, taken from DIR (the first in name order): ranges settle well before


class Calibration:
    """Where a graph's calibration inputs come from: ``folder`` (images of any suffix clipblip reads, texts one per
    line of its ``*.txt`` files, both searched recursively); None: no static int8."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder is not None else None
        self.images: list[Path] = []
        self.texts: list[str] = []
        if self.folder is None:
            return
        if not self.folder.is_dir():
            raise UsageError(f"--calibration {self.folder}: not a folder (it holds the images and .txt texts to "
                             f"calibrate int8 on)")
        files = sorted(p for p in self.folder.rglob("*") if p.is_file())
        self.images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES][:MAX_ITEMS]
        for path in (p for p in files if p.suffix.lower() == ".txt"):
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise UsageError(f"--calibration: {path}: cannot be read as UTF-8 text ({e})") from None
            self.texts += [line.strip() for line in lines if line.strip()]
        self.texts = self.texts[:MAX_ITEMS]
        if not self.images and not self.texts:
            raise UsageError(f"--calibration {self.folder}: holds no image and no .txt file of texts")

    def describe(self) -> dict[str, Any]:
        """The manifest's record of what calibrated the int8 copies."""
        return {"source": "--calibration", "images": len(self.images), "texts": len(self.texts)}

    def feeds(self, spec: GraphSpec, sections: dict[str, Any], folder: Path) -> list[dict[str, np.ndarray]]:
        """Batch-1 feeds for ``spec``'s graph: the images through the folder's preprocessing (``sections["image"]``)
        for an image tower, the texts through its tokenizer (written in ``folder``) for a text tower."""
        names = {t.name for t in spec.inputs}
        if "pixel_values" in names:
            if not self.images:
                raise UsageError(f"--calibration {self.folder}: holds no image to calibrate {spec.name} on")
            preprocess = ImagePreprocessor.from_manifest(sections["image"])
            return [{"pixel_values": preprocess([str(path)])} for path in self.images]  # (1, 3, H, W) each
        if "input_ids" in names:
            if not self.texts:
                raise UsageError(f"--calibration {self.folder}: holds no .txt file of texts to calibrate "
                                 f"{spec.name} on")
            tokenizer = TextTokenizer.from_manifest(folder, sections["tokenizer"])
            rows = []
            for text in self.texts:
                input_ids, attention_mask = tokenizer([text])  # (1, sequence)
                rows.append({k: v for k, v in (("input_ids", input_ids), ("attention_mask", attention_mask))
                             if k in names})
            return rows
        raise UsageError(f"--calibration: {spec.name} takes neither images nor texts; it has no calibrated copy")
