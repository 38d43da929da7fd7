"""Real attention from exported models: token×token maps, patch-grid overlays, rollout, cross-attention."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UsageError
from .style import display_label, heading, new_figure

__all__ = [
    "attention_rollout",
    "class_token_map",
    "token_attention_figure",
    "image_attention_figure",
    "cross_attention_figure",
]


def attention_rollout(attentions: np.ndarray) -> np.ndarray:
    """Abnar & Zuidema's rollout of (layers, heads, T, T) weights: (T, T), rows sum to 1.

    Each layer is head-averaged, mixed half-and-half with the identity (the residual path),
    renormalised, and the layers are multiplied from the first to the last.
    """
    layers, _, tokens, _ = attentions.shape
    rollout = np.eye(tokens)
    for layer in range(layers):
        a = 0.5 * attentions[layer].mean(axis=0) + 0.5 * np.eye(tokens)
        a /= a.sum(axis=-1, keepdims=True)
        rollout = a @ rollout
    return rollout


def class_token_map(weights: np.ndarray, grid: Sequence[int], class_token: bool = True) -> np.ndarray:
    """How much the class token (row 0) attends to each patch: (grid_h, grid_w), summing to 1.

    Without a class token (SigLIP pools its patches with a learnt probe after the last layer): how much
    attention each patch receives, averaged over all patches looking.
    """
    patches = np.asarray(weights[0, 1:] if class_token else weights.mean(axis=0), dtype=np.float64)
    return (patches / patches.sum()).reshape(grid)


def select_heads(attentions: np.ndarray, head: int | str) -> np.ndarray:
    """(…, heads, q, k) → (…, q, k): one head, or the mean over heads for ``"mean"``."""
    if head == "mean":
        return attentions.mean(axis=-3)
    if not 0 <= int(head) < attentions.shape[-3]:
        raise UsageError(f"head {head}: the model has heads 0 to {attentions.shape[-3] - 1}")
    return attentions[..., int(head), :, :]


def overlay(ax, view: np.ndarray, heat: np.ndarray, title: str) -> None:
    """``heat`` (grid) upsampled bilinearly over ``view`` (H, W, 3)."""
    height, width = view.shape[:2]
    ax.imshow(view)
    ax.imshow(heat / (heat.max() or 1.0), cmap="jet", alpha=0.45, extent=(0, width, height, 0),
              interpolation="bilinear", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _heatmap(ax, matrix: np.ndarray, tokens: Sequence[str], title: str, annotate: bool) -> None:
    ax.imshow(matrix, cmap="viridis", vmin=0, vmax=max(float(matrix.max()), 1e-9))
    tokens = [display_label(t) for t in tokens]
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
    ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    ax.set_title(title, fontsize=9)
    if annotate:
        for (r, c), value in np.ndenumerate(matrix):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=6,
                    color="black" if value > 0.5 * matrix.max() else "white")


def token_attention_figure(attentions: np.ndarray, tokens: Sequence[str], *, layer: int | None = None,
                           head: int | str = "mean", title: str = "text self-attention", note: str | None = None):
    """Token×token attention (rows look, columns are looked at) from (layers, heads, n, n) weights.

    With ``layer`` one map (``head`` or the head mean); without it, a grid: one row per layer,
    one column per head and a last column with the head mean.
    """
    layers, heads, n, _ = attentions.shape
    if layer is not None:
        if not 0 <= layer < layers:
            raise UsageError(f"layer {layer}: the model has layers 0 to {layers - 1}")
        fig = new_figure(2.5 + 0.45 * n, 2.2 + 0.45 * n)
        ax = fig.add_subplot()
        label = "mean of heads" if head == "mean" else f"head {head}"
        _heatmap(ax, select_heads(attentions[layer], head), tokens, f"layer {layer}, {label}", annotate=n <= 16)
        heading(fig, title, note)
        return fig
    size = 1.1 + 0.1 * n
    fig = new_figure(size * (heads + 1) + 1, size * layers + 1)
    heading(fig, title, note)
    axes = np.atleast_2d(fig.subplots(layers, heads + 1))
    for l in range(layers):
        for h in range(heads + 1):
            ax = axes[l, h]
            matrix = attentions[l].mean(axis=0) if h == heads else attentions[l, h]
            ax.imshow(matrix, cmap="viridis", vmin=0)
            ax.set_xticks([])
            ax.set_yticks([])
            if l == 0:
                ax.set_title("mean" if h == heads else f"head {h}", fontsize=8)
            if h == 0:
                ax.set_ylabel(f"layer {l}", fontsize=8)
    tokens = [display_label(t) for t in tokens]
    axes[-1, -1].set_xticks(range(n), tokens, rotation=90, fontsize=6)
    axes[-1, -1].set_yticks(range(n), tokens, fontsize=6)
    axes[-1, -1].yaxis.tick_right()
    return fig


def image_attention_figure(view: np.ndarray, attentions: np.ndarray, grid: Sequence[int], *,
                           layer: int | None = None, head: int | str = "mean", rollout: bool = False,
                           note: str | None = None, class_token: bool = True):
    """Class-token attention over the patch grid (without a class token: the attention each patch
    receives), overlaid on the model's view of the image.

    ``rollout``: attention rollout across all layers. ``layer``: that layer (one head or the mean).
    Neither: every layer's head mean in a strip, then the rollout.
    """
    layers = attentions.shape[0]
    panels: list[tuple[str, np.ndarray]] = []
    if rollout:
        panels.append(("attention rollout (all layers)",
                       class_token_map(attention_rollout(attentions), grid, class_token)))
    elif layer is not None:
        if not 0 <= layer < layers:
            raise UsageError(f"layer {layer}: the model has layers 0 to {layers - 1}")
        label = "mean of heads" if head == "mean" else f"head {head}"
        panels.append((f"layer {layer}, {label}",
                       class_token_map(select_heads(attentions[layer], head), grid, class_token)))
    else:
        panels += [(f"layer {l}", class_token_map(attentions[l].mean(axis=0), grid, class_token))
                   for l in range(layers)]
        panels.append(("rollout", class_token_map(attention_rollout(attentions), grid, class_token)))
    columns = min(len(panels) + 1, 7)
    rows = -(-(len(panels) + 1) // columns)
    fig = new_figure(2.3 * columns, 2.5 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    axes[0].imshow(view)
    axes[0].set_axis_off()
    axes[0].set_title("input (as the model sees it)", fontsize=9)
    for ax, (title, heat) in zip(axes[1:], panels):
        overlay(ax, view, heat, title)
    for ax in axes[len(panels) + 1:]:
        ax.set_axis_off()
    heading(fig, "class-token attention over image patches" if class_token else "attention each image patch receives",
            note)
    return fig


def cross_attention_figure(view: np.ndarray, words: Sequence[str], cross_attention: np.ndarray,
                           grid: Sequence[int], *, caption: str = "", note: str | None = None):
    """One overlay per generated word: where the decoder looked while choosing it.

    ``cross_attention`` is (layers, heads, words, image_tokens); layers and heads are averaged and
    the class token is left out.
    """
    per_word = cross_attention.mean(axis=(0, 1))  # (words, image_tokens)
    columns = min(len(words), 8)
    rows = max(1, -(-len(words) // columns))
    fig = new_figure(2.1 * max(columns, 1), 2.3 * rows + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, max(columns, 1))).ravel()
    for ax, word, weights in zip(axes, words, per_word):
        patches = weights[1:] / weights[1:].sum()
        overlay(ax, view, patches.reshape(grid), display_label(repr(word)))
    for ax in axes[len(words):]:
        ax.set_axis_off()
    heading(fig, f"BLIP cross-attention per generated word: {caption!r}", note)
    return fig
