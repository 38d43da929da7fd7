"""Logits processors and sampling warpers in numpy, with transformers' semantics.

Each function takes scores (rows, vocab) float32 and returns new scores of the same shape; ``sequences``
(rows, seen) int64 are the ids each row has seen so far, prompt included ([DEC] first), as transformers
passes ``input_ids`` to its processors. Removed tokens get -inf.
"""

from __future__ import annotations

import numpy as np

__all__ = ["log_softmax", "softmax", "min_new_tokens", "repetition_penalty", "no_repeat_ngram", "temperature",
           "top_k", "top_p", "min_p", "warp", "sample"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(rows, vocab) → log-probabilities, float32, computed as torch does: x - max - log(sum(exp(x - max)))."""
    shifted = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True).astype(np.float32)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True, dtype=np.float32))


def softmax(scores: np.ndarray) -> np.ndarray:
    """(rows, vocab) → probabilities, float64; -inf scores get 0."""
    shifted = np.exp(scores.astype(np.float64) - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def min_new_tokens(scores: np.ndarray, generated: int, minimum: int, eos_id: int) -> np.ndarray:
    """End of sequence impossible while fewer than ``minimum`` tokens have been generated."""
    if generated >= minimum:
        return scores
    out = scores.copy()
    out[:, eos_id] = -np.inf
    return out


def repetition_penalty(scores: np.ndarray, sequences: np.ndarray, penalty: float) -> np.ndarray:
    """Every token already in the row: score * penalty where negative, score / penalty otherwise."""
    seen = np.take_along_axis(scores, sequences, axis=1)  # (rows, seen)
    p = np.float32(penalty)
    out = scores.copy()
    np.put_along_axis(out, sequences, np.where(seen < 0, seen * p, seen / p).astype(scores.dtype), axis=1)
    return out


def no_repeat_ngram(scores: np.ndarray, sequences: np.ndarray, n: int) -> np.ndarray:
    """Ban every token that would complete an n-gram already present in the row."""
    seen = sequences.shape[1]
    if seen < n:
        return scores
    windows = np.lib.stride_tricks.sliding_window_view(sequences, n, axis=1)  # (rows, seen - n + 1, n)
    prefix = sequences[:, seen + 1 - n:]  # (rows, n - 1): the suffix the next token would extend
    matches = (windows[..., :-1] == prefix[:, None, :]).all(axis=-1)  # (rows, windows)
    rows, which = np.nonzero(matches)
    out = scores.copy()
    out[rows, windows[rows, which, -1]] = -np.inf
    return out


def temperature(scores: np.ndarray, t: float) -> np.ndarray:
    return scores / np.float32(t)


def top_k(scores: np.ndarray, k: int, min_tokens_to_keep: int = 1) -> np.ndarray:
    """Keep the tokens scoring at least the k-th best (ties with it kept, as transformers); k=0 keeps all."""
    vocab = scores.shape[-1]
    k = min(max(k, min_tokens_to_keep), vocab)
    if k == 0 or k == vocab:
        return scores
    kth = np.partition(scores, vocab - k, axis=-1)[:, vocab - k : vocab - k + 1]  # (rows, 1)
    return np.where(scores < kth, np.float32(-np.inf), scores)


def top_p(scores: np.ndarray, p: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """Keep the smallest set of best tokens whose probability reaches ``p`` (and at least ``min_tokens_to_keep``)."""
    if p >= 1.0:
        return scores
    order = np.argsort(scores, axis=-1, kind="stable")  # ascending, (rows, vocab)
    ascending = np.take_along_axis(scores, order, axis=-1)
    cumulative = np.cumsum(softmax(ascending), axis=-1)
    remove_sorted = cumulative <= 1 - p
    remove_sorted[:, -min_tokens_to_keep:] = False
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return np.where(remove, np.float32(-np.inf), scores)


def min_p(scores: np.ndarray, p: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """Drop the tokens whose probability is below ``p`` times the best token's (the best ``min_tokens_to_keep``
    always stay)."""
    probs = softmax(scores)  # (rows, vocab)
    remove = probs < p * probs.max(axis=-1, keepdims=True)
    keep = np.argsort(-probs, axis=-1, kind="stable")[:, :min_tokens_to_keep]  # (rows, min_tokens_to_keep)
    np.put_along_axis(remove, keep, False, axis=-1)
    return np.where(remove, np.float32(-np.inf), scores)


def warp(scores: np.ndarray, t: float, k: int, p: float, m: float = 0.0) -> np.ndarray:
    """transformers' warpers in its order: temperature, top-k, top-p, min-p (each skipped at its neutral value)."""
    if t != 1.0:
        scores = temperature(scores, t)
    if k != 0:
        scores = top_k(scores, k)
    scores = top_p(scores, p)
    return min_p(scores, m) if m > 0 else scores


def sample(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row drawn from softmax(scores): int64 (rows,). Never a token of probability 0."""
    cdf = np.cumsum(softmax(scores), axis=-1)  # (rows, vocab)
    u = rng.random(len(scores))[:, None] * cdf[:, -1:]  # (rows, 1) in [0, total)
    return (cdf <= u).sum(axis=-1).astype(np.int64)
