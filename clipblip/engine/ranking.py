"""VQA answer ranking as BLIP's authors do it (``inference: 'rank'``): each candidate answer is scored
by the log-likelihood of the decoder producing ``[DEC] candidate [SEP]`` over the question encoding.

The exported ``decoder_step`` graph returns the logits of the last position only, so the candidates
are teacher-forced one step at a time: all candidates are the rows of one batch, step t feeds column t
of ``[DEC] candidate [SEP] pad...`` and the log-softmax of the next column's token is added to the
row's score. Columns beyond a row's own [SEP] are fed (the batch moves together) but never scored;
the decoder is causal, so they cannot change the positions before them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import GenerationConfigError, TextInputError
from .generate import Decoder
from .items import batches
from .text import TextTokenizer

__all__ = ["candidate_ids", "teacher_forced_scores", "best_first"]


def _shown(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def candidate_ids(tokenizer: TextTokenizer, question: str, candidates: Sequence[str], limit: int) -> list[list[int]]:
    """Validate the question and the candidates; each candidate's token ids without [CLS] and [SEP].

    TextInputError for a non-string question, an empty candidate list, a non-string or blank
    candidate; GenerationConfigError for a candidate whose ``[DEC] candidate [SEP]`` passes the
    model's ``limit`` positions. Nothing runs on a model.
    """
    if not isinstance(question, str):
        raise TextInputError(f"question: expected a string, got {type(question).__name__}")
    if isinstance(candidates, str):
        raise TextInputError("candidates: expected a list of answers, got a single string")
    candidates = list(candidates)
    if not candidates:
        raise TextInputError("candidates: the list of answers to rank is empty")
    for i, candidate in enumerate(candidates):
        if not isinstance(candidate, str):
            raise TextInputError(f"candidate {i}: expected a string, got {type(candidate).__name__}")
    # the tokenizer truncates silently; a candidate this long in characters would not fit anyway
    # (at least one token per 64 characters)
    for i, candidate in enumerate(candidates):
        if len(candidate) > tokenizer.max_chars:
            raise GenerationConfigError(f"candidate {i} ({_shown(candidate)}): {len(candidate)} characters, "
                                        f"longer than the model's {limit} positions")
    encodings = tokenizer.tokenizer.encode_batch(candidates)  # [CLS] tokens [SEP], truncated at max_length
    out = []
    for i, (candidate, encoding) in enumerate(zip(candidates, encodings)):
        ids = list(encoding.ids)[1:-1]  # without [CLS] and [SEP]
        if not ids:
            raise TextInputError(f"candidate {i} ({_shown(candidate)}): no tokens, nothing to score")
        if encoding.overflowing or len(ids) + 2 > limit:
            raise GenerationConfigError(
                f"candidate {i} ({_shown(candidate)}): [DEC] candidate [SEP] passes the model's {limit} positions "
                f"(a candidate takes at most {limit - 2} tokens)")
        out.append(ids)
    return out


def teacher_forced_scores(decoder: Decoder, question_states: np.ndarray, ids: list[list[int]], *,
                          bos_id: int, eos_id: int, pad_id: int, max_rows: int) -> np.ndarray:
    """Log-likelihood of each ``[DEC] ids[j] [SEP]`` given one question encoding (1, question_len, width):
    float64 (len(ids),), summed over the tokens after [DEC], [SEP] included (NaN/Inf where the logits were).
    At most ``max_rows`` candidates run as one batch."""
    scores = np.empty(len(ids), dtype=np.float64)
    for part in batches(len(ids), max_rows):  # one batch for any usual candidate list
        rows = ids[part]
        lengths = np.array([len(r) + 2 for r in rows])  # [DEC] tokens [SEP]
        sequence = np.full((len(rows), lengths.max()), pad_id, dtype=np.int64)  # (candidates, longest)
        for j, row in enumerate(rows):
            sequence[j, : lengths[j]] = [bos_id, *row, eos_id]
        cross = decoder.cross(np.repeat(question_states, len(rows), axis=0))  # 2 x layers of
        # (candidates, heads, question_len, head_dim)
        past = decoder.empty_cache(len(rows))
        total = np.zeros(len(rows), dtype=np.float64)
        for t in range(sequence.shape[1] - 1):  # step t feeds column t and scores column t + 1
            logits, past = decoder.step(sequence[:, t : t + 1], past, cross)  # (candidates, vocab)
            logits = np.asarray(logits, dtype=np.float64).reshape(len(rows), -1)
            with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf rows become that image's error
                top = logits.max(axis=-1, keepdims=True)
                log_probs = logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))  # (cand, vocab)
            scored = t + 1 < lengths  # rows whose column t + 1 is still theirs
            total[scored] += log_probs[scored, sequence[scored, t + 1]]
        scores[part] = total
    return scores


def best_first(candidates: Sequence[str], scores: np.ndarray) -> list[tuple[str, float]]:
    """``(candidate, score)`` pairs, best first; ties keep the given order."""
    order = sorted(range(len(candidates)), key=lambda j: -scores[j])
    return [(candidates[j], float(scores[j])) for j in order]
