"""Decoding with a KV cache, in numpy: greedy, beam search and sampling, one loop family for captions and answers.

Every strategy reproduces transformers' ``generate()`` token for token (sampling: same semantics, numpy's
random generator). Logits processors and warpers live in :mod:`clipblip.engine.logits`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Literal, Protocol, get_type_hints

import numpy as np

from ..errors import GenerationConfigError
from . import logits as lp

__all__ = ["Generation", "GenerationOptions", "OPTION_NAMES", "OptionRule", "option_rules", "option_types", "greedy_decode", "sample_decode", "beam_decode", "Decoder"]


class Decoder(Protocol):
    """What the loops need of a decoder: cross-attention keys and values of encoder states, an empty cache, one
    step, and ways to drop or reorder rows."""

    device_argmax: bool  # whether ``step_argmax`` picks greedy tokens where the logits are

    def cross(self, encoder_states: np.ndarray) -> list[Any]: ...

    def empty_cache(self, batch: int) -> list[Any]: ...

    def step(self, input_ids: np.ndarray, past: list[Any], cross: list[Any]) -> tuple[np.ndarray, list[Any]]: ...

    def keep(self, tensors: list[Any], rows: np.ndarray) -> list[Any]: ...

    def gather(self, tensors: list[Any], rows: np.ndarray) -> list[Any]: ...


@dataclass
class Generation:
    """One generated text with its ids: ``prompt_ids`` fed to the decoder, ``token_ids`` it produced."""

    text: str
    token_ids: list[int]
    prompt_ids: list[int]
    score: float | None = None  # beam search: the best beam's score (length-penalised log-probability)


def _integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)) \
        and np.isfinite(value)


@dataclass(frozen=True)
class OptionRule:
    """How one decoding option is declared, once: what it does (``help``, shown by ``--help`` and the API docs),
    when a value is valid (``valid(value, options)``, the other options at hand), the error's wording when it is
    not (``must``), its command-line flag when it is not ``--name-with-dashes``, whether a checkpoint's
    ``generation_config.json`` may set it (export records it; the engine takes it as the default), and the one
    decoding mode that reads it ("sampling", "beam search"; None: every mode)."""

    help: str
    valid: Callable[[Any, Any], bool]
    must: str
    flag: str | None = None
    in_config: bool = True
    used_by: str | None = None


def option(default: Any, help: str, valid: Callable[[Any, Any], bool], must: str, flag: str | None = None,
           in_config: bool = True, used_by: str | None = None) -> Any:
    """A field of :class:`GenerationOptions` with its rule: the CLI flags (``clipblip caption/vqa``), the HTTP
    API's request fields (``/v1/caption``, ``/v1/vqa``) and the generation-config keys that export records are
    made from these fields."""
    return field(default=default, metadata={"rule": OptionRule(help, valid, must, flag, in_config, used_by)})


@dataclass(frozen=True)
class GenerationOptions:
    """How to decode, as transformers' ``generate()`` options; validated once, on construction
    (GenerationConfigError naming the option). ``num_beams > 1`` is beam search, ``do_sample`` sampling,
    otherwise greedy; the processors (min_new_tokens, repetition_penalty, no_repeat_ngram_size) apply to all.
    Each field is declared once, with its help and its rule (:func:`option`): a new option is a new field here
    (and its effect in the loop); the command line and the HTTP API take it from this class."""

    max_new_tokens: int = option(30, "how many tokens to generate at most",
                                 lambda v, o: _integer(v) and v >= 1, "must be a positive integer")
    num_beams: int = option(1, "beam search with N beams (1: greedy or sampling)",
                            lambda v, o: _integer(v) and v >= 1, "must be an integer >= 1")
    min_new_tokens: int = option(0, "no end of text before N tokens",
                                 lambda v, o: _integer(v) and v >= 0, "must be an integer >= 0")
    length_penalty: float = option(1.0, "beam search: a finished beam's score is divided by its length ** X "
                                        "(> 0 favours longer texts)", lambda v, o: _number(v),
                                   "must be a finite number", used_by="beam search")
    early_stopping: bool | Literal["never"] = option(
        False, "beam search: true stops when num_beams texts are finished; false when no running beam can "
               "beat them (estimated); never: by the exact rule", lambda v, o: v is True or v is False or
        (isinstance(v, str) and v == "never"), 'must be True, False or "never"', used_by="beam search")
    repetition_penalty: float = option(1.0, "divide the score of every token already in the text by X (> 1: "
                                            "fewer repeats)", lambda v, o: _number(v) and v > 0,
                                       "must be a number > 0")
    no_repeat_ngram_size: int = option(0, "never repeat an N-gram (0: off)",
                                       lambda v, o: _integer(v) and v >= 0, "must be an integer >= 0")
    do_sample: bool = option(False, "sample each token instead of searching",
                             lambda v, o: isinstance(v, (bool, np.bool_)), "must be True or False", flag="--sample")
    temperature: float = option(1.0, "sampling: divide the scores by X before the softmax (< 1: surer, "
                                     "> 1: more varied)",
                                lambda v, o: _number(v) and v >= 0 and not (o.do_sample is True and v == 0),
                                "must be a number > 0 when sampling (>= 0 otherwise)", used_by="sampling")
    top_k: int = option(50, "sampling: draw from the N best tokens only (0: no limit)",
                        lambda v, o: _integer(v) and v >= 0, "must be an integer >= 0 (0: no top-k filter)",
                        used_by="sampling")
    top_p: float = option(1.0, "sampling: draw from the fewest best tokens whose probabilities add up to X",
                          lambda v, o: _number(v) and 0 <= v <= 1, "must be a number in [0, 1]", used_by="sampling")
    min_p: float = option(0.0, "sampling: drop the tokens less probable than X times the most probable one (0: off)",
                          lambda v, o: _number(v) and 0 <= v <= 1, "must be a number in [0, 1]", used_by="sampling")
    seed: int | None = option(None, "sampling: the same seed N gives the same text (default: a new one each call)",
                              lambda v, o: v is None or (_integer(v) and v >= 0), "must be None or an integer >= 0",
                              in_config=False, used_by="sampling")

    def __post_init__(self):
        for name, rule in option_rules().items():
            value = getattr(self, name)
            if not rule.valid(value, self):
                raise GenerationConfigError(f"{name}={value!r}: {rule.must}")
        if self.min_new_tokens > self.max_new_tokens:
            raise GenerationConfigError(f"min_new_tokens={self.min_new_tokens}: must not pass "
                                        f"max_new_tokens={self.max_new_tokens}")
        if self.do_sample and self.num_beams > 1:
            raise GenerationConfigError(f"num_beams={self.num_beams}: beam sampling (do_sample with num_beams > 1) "
                                        f"is not supported")

    @property
    def mode(self) -> str:
        """The decoding strategy: "beam search", "sampling" or "greedy"."""
        return "beam search" if self.num_beams > 1 else "sampling" if self.do_sample else "greedy"

    def unused(self, given: Any) -> list[str]:
        """The options among ``given`` (names) that this decoding's mode never reads (temperature when greedy)."""
        rules = option_rules()
        return [name for name in given if rules[name].used_by not in (None, self.mode)]

    @property
    def processes(self) -> bool:
        """Whether any logits processor changes the scores."""
        return self.min_new_tokens > 0 or self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0

    def process(self, scores: np.ndarray, sequences: np.ndarray, generated: int, eos_id: int) -> np.ndarray:
        """transformers' processors in its order: repetition penalty, no-repeat n-grams, min new tokens.
        scores (rows, vocab); sequences (rows, seen) every id seen, prompt included."""
        if self.repetition_penalty != 1.0:
            scores = lp.repetition_penalty(scores, sequences, self.repetition_penalty)
        if self.no_repeat_ngram_size > 0:
            scores = lp.no_repeat_ngram(scores, sequences, self.no_repeat_ngram_size)
        if self.min_new_tokens > 0:
            scores = lp.min_new_tokens(scores, generated, self.min_new_tokens, eos_id)
        return scores

    def warp(self, scores: np.ndarray) -> np.ndarray:
        """Sampling's warpers, in transformers' order: temperature, top-k, top-p, min-p (each skipped at its neutral
        value)."""
        return lp.warp(scores, self.temperature, self.top_k, self.top_p, self.min_p)

    def rng(self) -> np.random.Generator:
        """The random generator of one call: seeded, or fresh entropy when ``seed`` is None."""
        return np.random.Generator(np.random.PCG64(self.seed))


def option_rules() -> dict[str, OptionRule]:
    """Every decoding option's rule, in declaration order."""
    return {f.name: f.metadata["rule"] for f in fields(GenerationOptions)}


def option_types() -> dict[str, Any]:
    """Every decoding option's type, as declared (``int``, ``float``, ``bool``, ``bool | Literal["never"]``...)."""
    return get_type_hints(GenerationOptions)


# the options a caller may leave unset (max_new_tokens has its own argument everywhere)
OPTION_NAMES = tuple(name for name in option_rules() if name != "max_new_tokens")


def _row_loop(decoder: Decoder, prompt: np.ndarray, cross: list[Any], options: GenerationOptions, eos_id: int,
              pad_id: int, pick, on_device: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Greedy and sampling: every row picks its own next token, ``pick(scores)`` → (rows,), and leaves the
    batch at its own end; ``on_device``: the decoder's ``step_argmax`` picks instead (greedy without
    processors), and the logits never reach the host. Returns (int64 (batch, max_new_tokens), pad after
    each end; bool (batch,) rows stopped by NaN/Inf logits)."""
    batch, steps = prompt.shape[0], options.max_new_tokens
    out = np.full((batch, steps), pad_id, dtype=np.int64)
    broken = np.zeros(batch, dtype=bool)
    rows = np.arange(batch)  # which output rows are still generating
    past = decoder.empty_cache(batch)  # 2 x layers of (rows, heads, 0, head_dim)
    tokens = prompt.astype(np.int64)  # the first step reads the whole prompt
    for t in range(steps):
        if on_device:  # next ids (rows,) and finite (rows,) from the device; the logits stay there
            next_ids, finite, past = decoder.step_argmax(tokens, past, cross)
        else:
            logits, past = decoder.step(tokens, past, cross)  # logits (rows, vocab); past (rows, heads, seen, hd)
            finite = np.isfinite(logits).all(axis=-1)
            if options.processes:  # the ids seen so far, prompt included: (rows, prompt_len + t)
                seen = np.concatenate([prompt[rows], out[rows, :t]], axis=1)
                logits = options.process(logits, seen, t, eos_id)
            next_ids = pick(logits)
        broken[rows[~finite]] = True
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


def greedy_decode(decoder: Decoder, prompt: np.ndarray, cross: list[Any], *, max_new_tokens: int, eos_id: int,
                  pad_id: int, options: GenerationOptions | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Generate up to ``max_new_tokens`` per row: (int64 (batch, max_new_tokens), pad after each end;
    bool (batch,) rows stopped by NaN/Inf logits).

    ``prompt`` (batch, prompt_len) starts every row ([DEC] and any prompt tokens). A row stops at
    its own ``eos_id``; finished rows leave the batch so that they cost nothing afterwards. A row
    whose logits are not finite stops at once and is reported, never given a token.
    """
    options = options or GenerationOptions(max_new_tokens=max_new_tokens)
    if options.max_new_tokens != max_new_tokens:
        options = replace(options, max_new_tokens=max_new_tokens)
    # a device decoder takes the argmax where the logits are, unless a processor needs them on the host
    on_device = not options.processes and decoder.device_argmax
    return _row_loop(decoder, prompt, cross, options, eos_id, pad_id,
                     lambda scores: scores.argmax(axis=-1), on_device)  # first maximum, as torch.argmax


def sample_decode(decoder: Decoder, prompt: np.ndarray, cross: list[Any], options: GenerationOptions, *,
                  eos_id: int, pad_id: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """As greedy_decode, each token drawn from the processed, warped softmax (temperature, top-k, top-p)."""
    return _row_loop(decoder, prompt, cross, options, eos_id, pad_id,
                     lambda scores: lp.sample(options.warp(scores), rng))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best per row, best first (ties: lowest index first): (rows, k). As a stable argsort of
    the whole row, but sorting only the entries at least as good as the row's k-th best (beam search asks for
    6 of 3 x 30,524 per step: a full sort cost 2.8 ms of a 50 ms step)."""
    rows, width = scores.shape
    if width <= 8 * k:
        return np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    kth = -np.partition(-scores, k - 1, axis=-1)[:, k - 1]  # (rows,) each row's k-th best value
    out = np.empty((rows, k), dtype=np.int64)
    for r in range(rows):
        candidates = np.flatnonzero(scores[r] >= kth[r])  # every tie of the k-th best too, in index order
        if len(candidates) < k:  # NaN in the row: compare as the full sort does
            out[r] = np.argsort(-scores[r], kind="stable")[:k]
        else:
            out[r] = candidates[np.argsort(-scores[r, candidates], kind="stable")[:k]]
    return out


def _take(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """array (items, n, ...) at index (items, k) along axis 1 → (items, k, ...)."""
    return np.take_along_axis(array, index.reshape(index.shape + (1,) * (array.ndim - 2)), axis=1)


_NEG = np.float32(-1e9)  # transformers' "never chosen" score


@dataclass
class _Beams:
    """Beam search state, per item still searching: ``running`` and ``finished`` (items, beams, total)
    sequences with their float32 scores (items, beams); ``is_fin`` which finished slots hold a real
    sequence; ``open_`` (items, 1) whether a running beam may still beat the finished ones."""

    items: np.ndarray
    running: np.ndarray
    run_scores: np.ndarray
    finished: np.ndarray
    fin_scores: np.ndarray
    is_fin: np.ndarray
    open_: np.ndarray

    def select(self, live: np.ndarray) -> _Beams:
        return _Beams(*(getattr(self, f)[live] for f in self.__dataclass_fields__))


def _beam_step(state: _Beams, scores: np.ndarray, cur: int, prompt_len: int, total: int, options: GenerationOptions,
               eos_id: int) -> np.ndarray:
    """One step of transformers' beam search on processed log-probs (items * beams, vocab); updates
    ``state`` and returns which running beam (items, beams) each new running beam continues."""
    beams, penalty, early = options.num_beams, options.length_penalty, options.early_stopping
    n, vocab = len(state.items), scores.shape[-1]
    scores = (scores.reshape(n, beams, vocab) + state.run_scores[:, :, None]).reshape(n, beams * vocab)
    best = _top(scores, 2 * beams)  # (n, 2 * beams) candidates, beam * vocab + token: enough that beams go on
    cand_scores, src, tok = np.take_along_axis(scores, best, 1), best // vocab, best % vocab
    cand = _take(state.running, src)  # (n, 2 * beams, total)
    cand[:, :, cur] = tok
    ends = (tok == eos_id) | (cur + 1 >= total)
    # the best candidates that do not end go on
    going = cand_scores + ends.astype(np.float32) * _NEG
    nxt = _top(going, beams)
    state.running, state.run_scores, run_src = _take(cand, nxt), _take(going, nxt), _take(src, nxt)
    # candidates among the best `beams` that end join the finished ones if they beat the worst, unless the
    # item is full (early_stopping=True) or can no longer improve; score / generated length ** penalty
    just = ends & (np.arange(2 * beams) < beams)
    new = cand_scores / np.float32((cur + 1 - prompt_len) ** penalty)
    new += (state.is_fin.all(axis=1, keepdims=True) & (early is True)).astype(np.float32) * _NEG
    new += (~state.open_).astype(np.float32) * _NEG
    new += (~just).astype(np.float32) * _NEG
    merged = np.concatenate([state.fin_scores, new], 1)
    pick = _top(merged, beams)
    state.finished = _take(np.concatenate([state.finished, cand], 1), pick)
    state.fin_scores = _take(merged, pick)
    state.is_fin = _take(np.concatenate([state.is_fin, just], 1), pick)
    # can the best running beam still beat the worst finished one? (its length guessed as transformers does)
    length = total - prompt_len if early == "never" and penalty > 0 else cur + 1 - prompt_len
    best_running = state.run_scores[:, :1] / np.float32(length ** penalty)
    worst = np.where(state.is_fin, state.fin_scores.min(axis=1, keepdims=True), _NEG)
    state.open_ &= (best_running > worst).any(axis=1, keepdims=True)
    return run_src


def beam_decode(decoder: Decoder, prompt: np.ndarray, cross: list[Any], options: GenerationOptions, *,
                eos_id: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Beam search as transformers' ``_beam_search``: per item ``num_beams`` running beams and the
    ``num_beams`` best finished ones, all items' beams through the decoder as one batch (items * beams
    rows, the cache reordered by ``gather``). An item stops when no running beam can beat its finished
    ones (with early_stopping=True: when it has num_beams finished); done or broken items leave the batch.
    Returns the best finished beam per item, as greedy_decode does, and its score (float32 (batch,),
    transformers' ``sequences_scores``)."""
    (batch, prompt_len), beams = prompt.shape, options.num_beams
    total = prompt_len + options.max_new_tokens
    out = np.full((batch, options.max_new_tokens), pad_id, dtype=np.int64)
    best = np.full(batch, np.nan, dtype=np.float32)
    broken = np.zeros(batch, dtype=bool)
    running = np.full((batch, beams, total), eos_id, dtype=np.int64)
    running[:, :, :prompt_len] = prompt[:, None, :]
    run_scores = np.zeros((batch, beams), np.float32)
    run_scores[:, 1:] = _NEG  # the first step takes only the first beam's tokens
    state = _Beams(np.arange(batch), running, run_scores, running.copy(), np.full((batch, beams), _NEG),
                   np.zeros((batch, beams), dtype=bool), np.ones((batch, 1), dtype=bool))
    logits, past = decoder.step(prompt.astype(np.int64), decoder.empty_cache(batch), cross)  # one row per item
    expand = np.repeat(np.arange(batch), beams)
    logits, past, cross = logits[expand], decoder.gather(past, expand), decoder.gather(cross, expand)
    for cur in range(prompt_len, total):
        n = len(state.items)
        bad = ~np.isfinite(logits).reshape(n, -1).all(axis=1)  # (n,) an item with NaN/Inf logits in any beam
        scores = lp.log_softmax(logits)  # (n * beams, vocab)
        if options.processes:
            scores = options.process(scores, state.running[:, :, :cur].reshape(n * beams, cur), cur - prompt_len,
                                     eos_id)
        run_src = _beam_step(state, scores, cur, prompt_len, total, options, eos_id)
        done = ~state.open_[:, 0] | (state.is_fin.all(axis=1) & (options.early_stopping is True)) | bad
        if cur + 1 == total:
            done[:] = True
        broken[state.items[done]] = bad[done]
        out[state.items[done]] = state.finished[done, 0, prompt_len:]  # the best finished beam
        best[state.items[done]] = state.fin_scores[done, 0]
        if done.all():
            break
        live = np.flatnonzero(~done)
        state = state.select(live)
        past = decoder.gather(past, (live[:, None] * beams + run_src[live]).reshape(-1))  # rows the beams continue
        if done.any():
            cross = decoder.gather(cross, np.repeat(live * beams, beams))
        logits, past = decoder.step(state.running[:, :, cur : cur + 1].reshape(-1, 1), past, cross)
    return out, broken, best


def trim(row: np.ndarray, eos_id: int) -> list[int]:
    """Generated ids up to and including the end token."""
    ids = row.tolist()
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids
