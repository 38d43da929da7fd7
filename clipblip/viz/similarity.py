"""Image × text heatmaps: CLIP cosine similarity, BLIP ITM probabilities and ITC cosines."""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np

from .style import display_label, distinct_format, heading, new_figure, thumbnail

__all__ = ["similarity_heatmap", "match_heatmaps"]

PROBABILITY = (0.0, 1.0)  # a probability's colours mean the same in every figure


def draw_heatmap(fig, ax, matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
                 title: str | None = None, images: Sequence[np.ndarray] | None = None, fmt: str | None = None,
                 limits: tuple[float, float] | None = None) -> None:
    """``matrix`` (rows × columns) on ``ax`` with values, wrapped labels, optional row thumbnails, colour bar.

    ``limits``: the colour scale's fixed ends (probabilities: 0 and 1); without them the colours span this
    matrix's range, and the colour bar says so. ``fmt`` (default: the decimals that tell differing cells apart).
    """
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    matrix = np.asarray(matrix, dtype=np.float64)
    rows, cols = matrix.shape
    low, high = limits if limits is not None else (np.nanmin(matrix), np.nanmax(matrix)) if matrix.size else (0, 1)
    image = ax.imshow(matrix, cmap="viridis", aspect="auto", vmin=low, vmax=high)
    ax.set_xticks(range(cols), [textwrap.fill(display_label(c), 18) for c in col_labels], fontsize=8)
    ax.set_yticks(range(rows), [textwrap.fill(display_label(r), 18) for r in row_labels], fontsize=8)
    if images is not None:
        ax.tick_params(axis="y", pad=62)
        for r, img in enumerate(images):
            box = AnnotationBbox(OffsetImage(thumbnail(img, 52), zoom=1.0), (0, r), xybox=(-32, 0),
                                 xycoords=("axes fraction", "data"), boxcoords="offset points", frameon=False,
                                 annotation_clip=False)
            ax.add_artist(box)
    fmt = fmt or distinct_format(matrix)
    middle = (low + high) / 2
    for (r, c), value in np.ndenumerate(matrix):
        ax.text(c, r, fmt.format(value), ha="center", va="center", fontsize=8,
                color="black" if value > middle else "white")
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label("fixed scale, 0 to 1" if limits == PROBABILITY else
                  f"fixed scale, {low:g} to {high:g}" if limits is not None else
                  "scaled to this figure's values", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)


def similarity_heatmap(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], *,
                       title: str = "cosine similarity", note: str | None = None,
                       images: Sequence[np.ndarray] | None = None, fmt: str | None = None):
    """A heatmap of ``matrix`` (images × texts); ``images`` (uint8 arrays) become row thumbnails."""
    rows, cols = np.shape(matrix)
    fig = new_figure(3.2 + 1.3 * cols, 1.6 + 0.9 * rows)
    draw_heatmap(fig, fig.add_subplot(), matrix, row_labels, col_labels, None, images, fmt)
    heading(fig, title, note)
    return fig


def match_heatmaps(itm: np.ndarray, itc: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], *,
                   note: str | None = None, images: Sequence[np.ndarray] | None = None):
    """BLIP retrieval side by side: ITM match probability (colours on a fixed 0–1 scale) and ITC cosine
    similarity."""
    rows, cols = np.shape(itm)
    fig = new_figure(2 * (3.2 + 1.3 * cols), 1.6 + 0.9 * rows)
    left, right = fig.subplots(1, 2)
    draw_heatmap(fig, left, itm, row_labels, col_labels, "BLIP ITM match probability", images, limits=PROBABILITY)
    draw_heatmap(fig, right, itc, row_labels, col_labels, "BLIP ITC cosine similarity", images)
    heading(fig, None, note)
    return fig
