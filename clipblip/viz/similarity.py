"""Image × text heatmaps: CLIP cosine similarity, BLIP ITM probabilities and ITC cosines."""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np

from .style import display_label, new_figure, thumbnail, title_with_note

__all__ = ["similarity_heatmap", "match_heatmaps"]


def draw_heatmap(fig, ax, matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str,
                 note: str | None = None, images: Sequence[np.ndarray] | None = None, fmt: str = "{:.2f}") -> None:
    """``matrix`` (rows × columns) on ``ax`` with values, wrapped labels, optional row thumbnails, colour bar."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    matrix = np.asarray(matrix, dtype=np.float64)
    rows, cols = matrix.shape
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    ax.set_xticks(range(cols), [textwrap.fill(display_label(c), 18) for c in col_labels], fontsize=8)
    ax.set_yticks(range(rows), [textwrap.fill(display_label(r), 18) for r in row_labels], fontsize=8)
    if images is not None:
        ax.tick_params(axis="y", pad=62)
        for r, img in enumerate(images):
            box = AnnotationBbox(OffsetImage(thumbnail(img, 52), zoom=1.0), (0, r), xybox=(-32, 0),
                                 xycoords=("axes fraction", "data"), boxcoords="offset points", frameon=False,
                                 annotation_clip=False)
            ax.add_artist(box)
    middle = (matrix.max() + matrix.min()) / 2 if matrix.size else 0
    for (r, c), value in np.ndenumerate(matrix):
        ax.text(c, r, fmt.format(value), ha="center", va="center", fontsize=8,
                color="black" if value > middle else "white")
    fig.colorbar(image, ax=ax, shrink=0.8)
    title_with_note(ax, title, note)


def similarity_heatmap(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], *,
                       title: str = "cosine similarity", note: str | None = None,
                       images: Sequence[np.ndarray] | None = None, fmt: str = "{:.2f}"):
    """A heatmap of ``matrix`` (images × texts); ``images`` (uint8 arrays) become row thumbnails."""
    rows, cols = np.shape(matrix)
    fig = new_figure(3.2 + 1.3 * cols, 1.6 + 0.9 * rows)
    draw_heatmap(fig, fig.add_subplot(), matrix, row_labels, col_labels, title, note, images, fmt)
    return fig


def match_heatmaps(itm: np.ndarray, itc: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], *,
                   note: str | None = None, images: Sequence[np.ndarray] | None = None):
    """BLIP retrieval side by side: ITM match probability and ITC cosine similarity."""
    rows, cols = np.shape(itm)
    fig = new_figure(2 * (3.2 + 1.3 * cols), 1.6 + 0.9 * rows)
    left, right = fig.subplots(1, 2)
    draw_heatmap(fig, left, itm, row_labels, col_labels, "BLIP ITM match probability", note, images)
    draw_heatmap(fig, right, itc, row_labels, col_labels, "BLIP ITC cosine similarity", note, images)
    return fig
