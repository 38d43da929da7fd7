"""A bounded cache of text embeddings, so a fixed label set costs its text tower runs once."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np

from .items import check_finite

__all__ = ["TEXT_CACHE_SIZE", "TextCache"]

TEXT_CACHE_SIZE = 4096  # texts; one ViT-B embedding is 2 KB, so at most a few MB


class TextCache:
    """Embeddings by exact text, least recently used dropped first; safe to share between threads.

    Only finite rows are kept, so a text whose embedding failed is computed again next time.
    """

    def __init__(self, max_items: int = TEXT_CACHE_SIZE):
        self.max_items = max_items
        self._rows: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

    def embed(self, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray], dim: int,
              what: str) -> tuple[np.ndarray, dict]:
        """Rows for ``texts`` (M, dim), computing only the texts not cached; errors by the caller's index."""
        if not all(isinstance(t, str) for t in texts):
            return self._checked(compute(list(texts)), what)  # the tokenizer names the item that is no text
        out = np.empty((len(texts), dim), dtype=np.float32)
        with self._lock:
            cached = {t: self._rows[t] for t in dict.fromkeys(texts) if t in self._rows}
            for text in cached:
                self._rows.move_to_end(text)
        missing = [t for t in dict.fromkeys(texts) if t not in cached]
        fresh = dict(zip(missing, compute(missing))) if missing else {}
        for i, text in enumerate(texts):
            out[i] = cached[text] if text in cached else fresh[text]
        with self._lock:
            for text, row in fresh.items():
                if self.max_items and np.isfinite(row).all():
                    self._rows[text] = row.copy()
                    self._rows.move_to_end(text)
            while len(self._rows) > self.max_items:
                self._rows.popitem(last=False)
        return self._checked(out, what)

    @staticmethod
    def _checked(rows: np.ndarray, what: str) -> tuple[np.ndarray, dict]:
        errors: dict = {}
        check_finite(rows, range(len(rows)), errors, what)
        return rows, errors
