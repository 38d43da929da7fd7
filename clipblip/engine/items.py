"""Per-item results and errors, shared by every engine.

A batch call never fails as a whole because one item is bad: each failed item gets its own error
under its index in the caller's list. Callers choose between data and exceptions: engine methods
raise (``PartialFailure`` carrying the results, or the item's own error for a single item) unless
asked ``return_errors=True``, which returns ``(results, {index: error})`` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import ClipblipError, NumericalError, UsageError, raise_item_errors
from ..manifest import Manifest

__all__ = ["batches", "softmax", "l2_normalize", "check_finite", "finish", "attention_names", "finite_attention",
           "as_texts"]


def batches(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` covering ``range(n)``."""
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def check_finite(values: np.ndarray, indices: Iterable[int], errors: dict[int, ClipblipError], what: str) -> None:
    """Record a NumericalError for each row of ``values`` with NaN/Inf, under the caller's index of that
    row (``indices[row]``), unless that item already has an error of its own."""
    indices = list(indices)
    if len(values) != len(indices):
        raise ValueError(f"check_finite: {len(values)} rows for {len(indices)} indices")
    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1) if len(values) else np.ones(0, bool)
    for row in np.flatnonzero(~finite):
        index = indices[int(row)]
        errors.setdefault(index, NumericalError(f"item {index}: the {what} has NaN/Inf"))


def finish(results: Any, errors: dict[int, ClipblipError], count: int, return_errors: bool):
    """``(results, errors)`` when the caller asked for data; otherwise the results, or the exception."""
    if return_errors:
        return results, dict(sorted(errors.items()))
    raise_item_errors(errors, count, results)
    return results


def attention_names(folder: Path, manifest: Manifest, graph: str, prefix: str = "attentions_") -> list[str]:
    """The graph's attention-weight outputs, in layer order; UsageError if it was exported without them."""
    names = [n for n in manifest.graph(folder, graph).attention_outputs if n.startswith(prefix)]
    if not names:
        raise UsageError(f"{folder}: exported without attention weights; re-export with `clipblip export ... "
                         f"--attentions` to visualise attention")
    return names


def finite_attention(weights: np.ndarray, name: str) -> np.ndarray:
    """The weights, or a NumericalError naming the input they came from."""
    if not np.isfinite(weights).all():
        raise NumericalError(f"{name}: the attention weights have NaN/Inf")
    return weights


def as_texts(texts: str | Sequence[str]) -> list:
    """A single string is one text; anything else is a sequence of texts."""
    return [texts] if isinstance(texts, str) else list(texts)
