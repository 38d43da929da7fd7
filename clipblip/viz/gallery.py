"""Galleries: images with their captions, question → answer, and CLIP's top labels as bars."""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np

from .style import display_label, heading, new_figure

__all__ = ["caption_gallery", "vqa_gallery", "topk_bars"]


def _gallery(images: Sequence[np.ndarray], texts: Sequence[str], title: str, note: str | None):
    fig = new_figure(3.2 * len(images), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(images)))
    for ax, image, text in zip(axes, images, texts):
        ax.imshow(image)
        ax.set_axis_off()
        lines = display_label(text).split("\n")
        ax.set_title("\n".join(textwrap.fill(line, 32) for line in lines), fontsize=8, loc="left")
    heading(fig, title, note)
    return fig


def caption_gallery(images: Sequence[np.ndarray], captions: Sequence[str], *, title: str = "BLIP captions",
                    note: str | None = None):
    """Each image (uint8 (H, W, 3)) with its caption above it."""
    return _gallery(images, captions, title, note)


def vqa_gallery(images: Sequence[np.ndarray], questions: Sequence[str], answers: Sequence[str], *,
                note: str | None = None):
    """Each image with its question → answer."""
    texts = [f"Q: {display_label(q)}\nA: {display_label(a)}" for q, a in zip(questions, answers)]
    return _gallery(images, texts, "BLIP visual question answering", note)


def topk_bars(images: Sequence[np.ndarray], ranked: Sequence[Sequence[tuple[str, float]]], *, k: int = 5,
              note: str | None = None):
    """Per image: the image, and its top-``k`` labels as probability bars (CLIP zero-shot)."""
    fig = new_figure(6.0, 2.4 * len(images) + 0.5)
    axes = np.atleast_2d(fig.subplots(len(images), 2, width_ratios=[1, 1.6]))
    for (image_ax, bar_ax), image, labels in zip(axes, images, ranked):
        image_ax.imshow(image)
        image_ax.set_axis_off()
        top = list(labels)[:k][::-1]
        bar_ax.barh(range(len(top)), [p for _, p in top], color="tab:blue")
        bar_ax.set_yticks(range(len(top)), [textwrap.fill(display_label(l), 22) for l, _ in top], fontsize=8)
        bar_ax.set_xlim(0, 1)
        for i, (_, p) in enumerate(top):
            bar_ax.text(min(p, 0.8) + 0.02, i, f"{p:.1%}", va="center", fontsize=8)
    heading(fig, f"CLIP zero-shot: top {k} labels", note)
    return fig
