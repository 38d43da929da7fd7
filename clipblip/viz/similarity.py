"""Image × text similarity heatmaps."""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np


def draw_heatmap(fig, ax, matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str,
                 note: str | None = None, fmt: str = "{:.2f}") -> None:
    """Draw ``matrix`` (rows × columns) on ``ax``, annotated with its values and a colour bar."""
    matrix = np.asarray(matrix, dtype=np.float64)
    rows, cols = matrix.shape
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    ax.set_xticks(range(cols), [textwrap.fill(c, 18) for c in col_labels], fontsize=8)
    ax.set_yticks(range(rows), [textwrap.fill(r, 24) for r in row_labels], fontsize=8)
    middle = (matrix.max() + matrix.min()) / 2 if matrix.size else 0
    for (r, c), value in np.ndenumerate(matrix):
        ax.text(c, r, fmt.format(value), ha="center", va="center", fontsize=8,
                color="black" if value > middle else "white")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title if note is None else f"{title}\n{note}", fontsize=9,
                 color="black" if note is None else "darkred")


def similarity_heatmap(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], *,
                       title: str = "cosine similarity", note: str | None = None, fmt: str = "{:.2f}"):
    """A heatmap of ``matrix`` (images × texts) annotated with its values; returns the Figure.

    ``note`` (e.g. the random-weights warning) is printed under the title in red.
    """
    from matplotlib.figure import Figure

    rows, cols = np.shape(matrix)
    fig = Figure(figsize=(2.0 + 1.3 * cols, 1.6 + 0.8 * rows), layout="constrained")
    draw_heatmap(fig, fig.add_subplot(), matrix, row_labels, col_labels, title, note, fmt)
    return fig


def match_heatmaps(itm: np.ndarray, itc: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], *,
                   note: str | None = None):
    """BLIP retrieval side by side: ITM match probability and ITC cosine similarity; returns the Figure."""
    from matplotlib.figure import Figure

    rows, cols = np.shape(itm)
    fig = Figure(figsize=(2 * (2.0 + 1.3 * cols), 1.6 + 0.8 * rows), layout="constrained")
    left, right = fig.subplots(1, 2)
    draw_heatmap(fig, left, itm, row_labels, col_labels, "BLIP ITM match probability", note)
    draw_heatmap(fig, right, itc, row_labels, col_labels, "BLIP ITC cosine similarity", note)
    return fig
