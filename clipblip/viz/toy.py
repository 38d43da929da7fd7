"""The teaching figure: scaled dot-product self-attention on a short sentence, step by step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .style import display_label, new_figure

__all__ = ["TOY_TOKENS", "ToyAttention", "toy_attention", "toy_attention_figure"]

TOY_TOKENS = ("[CLS]", "我", "喜欢", "小猫", "和", "小狗")  # "[CLS] I like kittens and puppies"


@dataclass
class ToyAttention:
    """Every intermediate of multi-head self-attention on random embeddings."""

    tokens: list[str]
    x: np.ndarray  # (n, d_model) token embeddings
    q: np.ndarray  # (heads, n, d_head)
    k: np.ndarray
    v: np.ndarray
    scores: np.ndarray  # (heads, n, n) q·kᵀ / √d_head
    weights: np.ndarray  # (heads, n, n) softmax over keys: rows sum to 1
    output: np.ndarray  # (heads, n, d_head) weights · v


def toy_attention(tokens: Sequence[str] = TOY_TOKENS, seed: int = 0, d_model: int = 8,
                  heads: int = 2) -> ToyAttention:
    """Self-attention over ``tokens`` with random embeddings and projections drawn from ``seed``."""
    if d_model % heads:
        raise ValueError(f"d_model={d_model} is not a multiple of heads={heads}")
    rng = np.random.default_rng(seed)
    n, d_head = len(tokens), d_model // heads
    x = rng.standard_normal((n, d_model))
    w_q, w_k, w_v = (rng.standard_normal((d_model, d_model)) / np.sqrt(d_model) for _ in range(3))

    def split(m):  # (n, d_model) → (heads, n, d_head)
        return m.reshape(n, heads, d_head).transpose(1, 0, 2)

    q, k, v = split(x @ w_q), split(x @ w_k), split(x @ w_v)
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(d_head)  # (heads, n, n)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return ToyAttention(list(tokens), x, q, k, v, scores, weights, weights @ v)


def _matrix(ax, m: np.ndarray, title: str, rows: Sequence[str], cols: Sequence[str] | None = None,
            annotate: bool = False, cmap: str = "RdBu_r") -> None:
    limit = np.abs(m).max() or 1.0
    ax.imshow(m, cmap=cmap, vmin=0 if cmap == "viridis" else -limit, vmax=1 if cmap == "viridis" else limit)
    ax.set_title(title, fontsize=9)
    rows = [display_label(r) for r in rows]
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
    if cols is None:
        ax.set_xticks([])
    else:
        ax.set_xticks(range(len(cols)), [display_label(c) for c in cols], fontsize=9, rotation=45)
    if annotate:
        for (r, c), value in np.ndenumerate(m):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.5 else "black")


def toy_attention_figure(tokens: Sequence[str] = TOY_TOKENS, seed: int = 0, d_model: int = 8, heads: int = 2):
    """Q/K/V, scores, softmax weights of head 1 and the mean over heads side by side; returns the Figure."""
    toy = toy_attention(tokens, seed, d_model, heads)
    t = toy.tokens
    fig = new_figure(15, 7.5)
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.25])
    top.suptitle(f"Self-attention step by step (random embeddings and weights, seed {seed}, "
                 f"d_model={d_model}, {heads} heads)", fontsize=11)
    axes = top.subplots(1, 4)
    _matrix(axes[0], toy.x, "1. X: token embeddings", t)
    _matrix(axes[1], toy.q[0], "2. Q = X·Wq (head 1)", t)
    _matrix(axes[2], toy.k[0], "2. K = X·Wk (head 1)", t)
    _matrix(axes[3], toy.v[0], "2. V = X·Wv (head 1)", t)
    axes = bottom.subplots(1, 4, width_ratios=[1, 1, 1, 0.55])
    _matrix(axes[0], toy.scores[0], "3. scores = Q·Kᵀ / √d_head (head 1)", t, t)
    _matrix(axes[1], toy.weights[0], "4. softmax(scores): single head\nrows: tokens that look; columns: looked at",
            t, t, annotate=True, cmap="viridis")
    _matrix(axes[2], toy.weights.mean(0), f"5. multi-head: mean of {heads} heads", t, t, annotate=True,
            cmap="viridis")
    _matrix(axes[3], toy.output[0], "6. output = weights·V (head 1)", t)
    return fig
