"""Greedy decoding with a KV cache, in numpy: one loop for captions and answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = ["Generation", "greedy_decode", "Decoder"]


class Decoder(Protocol):
    """What the loop needs of a decoder: an empty cache, one step, and a way to drop rows."""

    def empty_cache(self, batch: int) -> list[Any]: ...

    def step(self, input_ids: np.ndarray, past: list[Any], cross: list[Any]) -> tuple[np.ndarray, list[Any]]: ...

    def keep(self, tensors: list[Any], rows: np.ndarray) -> list[Any]: ...


@dataclass
class Generation:
    """One generated text with its ids: ``prompt_ids`` fed to the decoder, ``token_ids`` it produced."""

    text: str
    token_ids: list[int]
    prompt_ids: list[int]


def greedy_decode(decoder: Decoder, prompt: np.ndarray, cross: list[Any], *, max_new_tokens: int, eos_id: int,
                  pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate up to ``max_new_tokens`` per row: (int64 (batch, max_new_tokens), pad after each end;
    bool (batch,) rows stopped by NaN/Inf logits).

    ``prompt`` (batch, prompt_len) starts every row ([DEC] and any prompt tokens). A row stops at
    its own ``eos_id``; finished rows leave the batch so that they cost nothing afterwards. A row
    whose logits are not finite stops at once and is reported, never given a token.
    """
    batch = prompt.shape[0]
    out = np.full((batch, max_new_tokens), pad_id, dtype=np.int64)
    broken = np.zeros(batch, dtype=bool)
    rows = np.arange(batch)  # which output rows are still generating
    past = decoder.empty_cache(batch)  # 2 x layers of (rows, heads, 0, head_dim)
    tokens = prompt.astype(np.int64)  # the first step reads the whole prompt
    for t in range(max_new_tokens):
        logits, past = decoder.step(tokens, past, cross)  # logits (rows, vocab); past (rows, heads, seen, hd)
        finite = np.isfinite(logits).all(axis=-1)
        broken[rows[~finite]] = True
        next_ids = logits.argmax(axis=-1)  # greedy: first maximum, as torch.argmax
        out[rows[finite], t] = next_ids[finite]
        ended = (next_ids == eos_id) | ~finite
        if ended.all():
            break
        if ended.any():  # drop finished rows from the batch, their cache and their cross K/V
            keep = ~ended
            rows, next_ids = rows[keep], next_ids[keep]
            past, cross = decoder.keep(past, keep), decoder.keep(cross, keep)
        tokens = next_ids[:, None]  # (rows, 1)
    return out, broken


def trim(row: np.ndarray, eos_id: int) -> list[int]:
    """Generated ids up to and including the end token."""
    ids = row.tolist()
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids
