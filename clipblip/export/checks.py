"""Each graph's stored check, made at export: the gate's inputs and the fp32 graph's outputs for them.

The engine runs it where the folder runs (:mod:`clipblip.engine.checks`); export runs the very same data
through the same code to decide whether a lower precision is kept, so what ``clipblip verify`` measures on
another machine is comparable number for number with what the manifest recorded here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.checks import CHECK_SUFFIX
from ..manifest import sha256_of
from .convert import open_session
from .specs import GraphSpec

__all__ = ["build_check", "stored", "check_entry", "write_check"]


def _fp16_grid(array: np.ndarray) -> np.ndarray:
    """Float inputs rounded to values float16 holds exactly, so that they are stored at half the size."""
    return array.astype(np.float16).astype(np.float32) if array.dtype == np.float32 else array


def build_check(spec: GraphSpec, fp32_path: Path, cross: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The check of a graph, float32 in memory: ``spec.sample`` at each of ``spec.gate_sizes`` (seeded) and the
    fp32 graph's gated outputs for them; for a decoder step (``spec.teacher``), fp32's greedy decode from bos
    over cross K/V made by the model (``cross``, from :func:`clipblip.export.trace.teacher_inputs`, or made here
    by the model): the token fed at each step and fp32's logits there."""
    session = open_session(fp32_path)
    gated = list(spec.gate) or [t.name for t in spec.outputs]
    data: dict[str, np.ndarray] = {}
    generator = torch.Generator().manual_seed(2)
    for k, sizes in enumerate(spec.gate_sizes):
        feeds = {name: _fp16_grid(value.numpy()) for name, value in spec.sample(sizes, generator).items()}
        for name, value in zip(gated, session.run(gated, feeds)):
            data[f"case{k}/ref/{name}"] = value
        data.update({f"case{k}/in/{name}": value for name, value in feeds.items()})
    if spec.teacher is not None:
        teacher = spec.teacher
        if cross is None:
            from .trace import teacher_inputs

            cross = teacher_inputs(spec)
        cross = {name: _fp16_grid(value.astype(np.float32)) for name, value in cross.items()}
        rows = next(iter(cross.values())).shape[0]
        past = [t for t in spec.inputs if t.name.startswith("past_")]
        presents = [t.name for t in spec.outputs if t.name.startswith("present_")]
        cache = {t.name: np.zeros(t.shape_for({"batch": rows, "past_sequence": 0}), np.float32) for t in past}
        tokens = [np.full(rows, teacher.bos_id, dtype=np.int64)]
        logits = []
        for _ in range(teacher.steps):
            out = session.run([teacher.logits, *presents], {"input_ids": tokens[-1][:, None], **cache, **cross})
            logits.append(out[0])  # (rows, vocab)
            cache = dict(zip((t.name for t in past), out[1:]))
            tokens.append(out[0].argmax(-1).astype(np.int64))  # fp32's greedy pick, fed to both sides next
        data["teacher/tokens"] = np.stack(tokens[:-1])  # (steps, rows)
        data["teacher/logits"] = np.stack(logits)  # (steps, rows, vocab)
        data.update({f"teacher/cross/{name}": value for name, value in cross.items()})
    return data


def stored(data: dict[str, np.ndarray], lossy: bool) -> dict[str, np.ndarray]:
    """The check as the file holds it: float inputs as float16 (exact: they are on its grid); references
    float16 for a ``lossy`` graph's cosine gate, float32 for an fp32 graph's max-difference gate, which
    keeps no teacher-forced decode (fp32 is checked value for value)."""
    kept = {}
    for key, value in data.items():
        if key.startswith("teacher/") and not lossy:
            continue
        reference = "/ref/" in key or key == "teacher/logits"
        if value.dtype == np.float32 and (lossy or not reference):
            value = value.astype(np.float16)
        kept[key] = value
    return kept


def check_entry(spec: GraphSpec) -> dict[str, Any]:
    """The manifest's ``check`` of a graph, before its file is written: the gate and the stored sizes."""
    entry: dict[str, Any] = {"cases": [dict(s) for s in spec.gate_sizes],
                             "cosine": dict(spec.gate) or {t.name: 0.999 for t in spec.outputs},
                             "max_abs_diff": spec.atol}
    if spec.teacher is not None:
        t = spec.teacher
        entry["teacher"] = {"steps": t.steps, "min_top1": t.min_top1, "min_cosine": t.min_cosine,
                            "near_tie": t.near_tie, "logits": t.logits, "bos_id": t.bos_id}
    return entry


def write_check(data: dict[str, np.ndarray], folder: Path, name: str, lossy: bool) -> dict[str, Any]:
    """Write ``<name>.checks.npz`` into ``folder``; its file name, sha256 and size for the manifest."""
    path = folder / f"{name}{CHECK_SUFFIX}"
    with open(path, "wb") as f:  # a new file: the user's umask applies
        np.savez(f, **stored(data, lossy))
    return {"file": path.name, "sha256": sha256_of(path), "bytes": path.stat().st_size}
