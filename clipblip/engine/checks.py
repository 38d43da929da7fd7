"""A model folder checks itself where it runs: each graph's gate inputs and fp32 references, run again here.

Export stores beside every graph ``<graph>.checks.npz``: the inputs its gate ran on and the fp32 graph's
outputs for them (and, for a decoder step, a teacher-forced greedy decode). The manifest's ``check`` entry
names the file, its sha256 and the gate. The same :func:`run_check` decides at export whether a lower
precision is kept and, on any other machine, provider or runtime, whether the graph still holds:

- an fp32 graph: the largest absolute difference to the stored fp32 outputs, at most the parity tolerance;
- a lower precision (int8, int4, fp16) or another runtime's copy (OpenVINO): the least cosine per row to the
  stored fp32 outputs, and for a decoder step the teacher-forced decoding gate.

Arrays in the file, by name: ``case<k>/in/<input>`` and ``case<k>/ref/<output>``; ``teacher/cross/<input>``
(rows, heads, tokens, head_dim), ``teacher/tokens`` (steps, rows) the token fed at each step (bos, then
fp32's greedy picks) and ``teacher/logits`` (steps, rows, vocab) fp32's logits. Float inputs are values of
the float16 grid, stored as float16 without loss; references are float32 where the gate is a max
difference and float16 where it is a cosine (the rounding moves a cosine by less than 1e-6).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .. import __version__
from ..errors import AccuracyError, ModelLoadError
from ..manifest import GraphInfo, Manifest, has_sha256, read_user_record, write_user_record
from .machine import this_machine

__all__ = ["CHECK_SUFFIX", "cosines", "centred_cosines", "gate_of", "run_check", "check_graph", "check_folder",
           "ensure_checked", "verify_folder", "runtime_of", "summary"]

CHECK_SUFFIX = ".checks.npz"
CHECK_PROCEDURE = 1  # bump when run_check changes what it measures: recorded results are then not reused
RECORD_NAME = "checks.json"
RECORD_LIMIT = 2000  # graph x machine x runtime results remembered


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each batch row, flattened."""
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    denominator = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(denominator > 0, (a * b).sum(1) / np.maximum(denominator, 1e-300), 1.0)


def centred_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, the cosine of ``a`` and ``b`` after subtracting each row's mean (a constant offset changes no
    softmax); a row that is constant on one side only scores 0 (a dead candidate must not pass)."""
    a = a.astype(np.float64) - a.mean(axis=-1, keepdims=True)
    b = b.astype(np.float64) - b.mean(axis=-1, keepdims=True)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    both_flat = (np.linalg.norm(a, axis=-1) == 0) & (np.linalg.norm(b, axis=-1) == 0)
    return np.where(both_flat, 1.0, (a * b).sum(-1) / np.maximum(norms, 1e-300))


def gate_of(info: GraphInfo, lossy: bool) -> dict[str, Any]:
    """The gate a graph must pass here: ``lossy`` for a lower precision or another runtime's copy (cosine,
    and the teacher-forced decode where the check holds one), else fp32's max difference."""
    check = info.check
    if lossy:
        return {"metric": "cosine", "threshold": dict(check["cosine"]), "teacher": check.get("teacher")}
    return {"metric": "max_abs_diff", "threshold": {name: check["max_abs_diff"] for name in check["cosine"]},
            "teacher": None}


def _cases(data: dict[str, np.ndarray]) -> Iterable[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    k = 0
    while any(key.startswith(f"case{k}/") for key in data):
        feeds = {key.split("/", 2)[2]: _as_fed(data[key]) for key in data if key.startswith(f"case{k}/in/")}
        refs = {key.split("/", 2)[2]: data[key] for key in data if key.startswith(f"case{k}/ref/")}
        yield feeds, refs
        k += 1


def _as_fed(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) if array.dtype == np.float16 else array


def teacher_forced(session: Any, data: dict[str, np.ndarray], teacher: dict[str, Any], past: list[tuple[str, tuple]],
                   presents: list[str]) -> dict[str, Any]:
    """The decoder step's gate on whole decodes: the candidate is fed fp32's greedy tokens one per step, with its
    own KV cache (``past``: (input name, shape with 0 past positions) per cache input; ``presents`` the outputs
    fed back). Per step and row: whether it picks fp32's top-1 token (a different pick that fp32 rates within
    ``near_tie`` nats of its own is fp32's coin flip and counts as agreement), and the cosine of both logits
    centred per row. Passes when the agreement rate and the least cosine reach their thresholds."""
    cross = {key.split("/", 2)[2]: _as_fed(data[key]) for key in data if key.startswith("teacher/cross/")}
    tokens, reference = data["teacher/tokens"], data["teacher/logits"]  # (steps, rows), (steps, rows, vocab)
    steps, rows = tokens.shape
    cache = {name: np.zeros((rows, *shape[1:]), np.float32) for name, shape in past}
    same_total = excused = decisive = 0
    least, per_step, finite = 1.0, [], True
    for t in range(steps):
        out = session.run([teacher["logits"], *presents], {"input_ids": tokens[t][:, None], **cache, **cross})
        got, want = out[0].astype(np.float64), reference[t].astype(np.float64)  # (rows, vocab)
        cache = dict(zip((name for name, _ in past), out[1:]))
        if not np.all(np.isfinite(got)):
            finite = False
            break
        picked = tokens[t + 1] if t + 1 < steps else want.argmax(-1)  # fp32's choice (from its float32 logits)
        chosen = got.argmax(-1)
        same = picked == chosen
        gap = want[np.arange(rows), picked] - want[np.arange(rows), chosen]  # fp32's preference, nats
        runner_up = np.sort(want, axis=-1)[:, -2]
        decisive += int((want[np.arange(rows), picked] - runner_up > teacher["near_tie"]).sum())
        same_total += int(same.sum())
        excused += int((~same & (gap <= teacher["near_tie"])).sum())
        step_cosine = float(centred_cosines(want, got).min())
        per_step.append(round(step_cosine, 6))
        least = min(least, step_cosine)
    decisions = rows * steps
    record = {"steps": steps, "rows": rows, "near_tie": teacher["near_tie"], "finite": finite,
              "threshold": {"top1_agreement": teacher["min_top1"], "least_cosine": teacher["min_cosine"]}}
    if not finite:
        return {**record, "top1_agreement": None, "least_cosine": None, "passed": False,
                "reason": "NaN/Inf in the candidate's logits"}
    rate = (same_total + excused) / decisions
    return {**record, "top1_agreement": rate, "exact_top1_agreement": same_total / decisions,
            "near_tie_flips": excused, "decisive_steps": decisive, "least_cosine": least, "cosine_per_step": per_step,
            "passed": bool(rate >= teacher["min_top1"] and least >= teacher["min_cosine"])}


def run_check(session: Any, data: dict[str, np.ndarray], gate: dict[str, Any], info: GraphInfo) -> dict[str, Any]:
    """Run ``session`` (anything with ``run(names, feeds)``) on the stored inputs and measure ``gate``:
    per gated output the least cosine or the largest absolute difference to the stored fp32 outputs."""
    threshold = gate["threshold"]
    cosine = gate["metric"] == "cosine"
    measured = {name: (1.0 if cosine else 0.0) for name in threshold}
    finite = True
    names = list(threshold)
    for feeds, refs in _cases(data):
        got = dict(zip(names, session.run(names, feeds)))
        for name in names:
            value, ref = got[name], refs[name]
            finite &= bool(np.all(np.isfinite(value)))
            if value.shape != ref.shape:
                raise ModelLoadError(f"graph output '{name}' has shape {value.shape}, its check expects {ref.shape}")
            if cosine:
                measured[name] = min(measured[name], float(cosines(ref, value).min()))
            elif value.size:
                diff = float(np.max(np.abs(value.astype(np.float64) - ref.astype(np.float64))))
                measured[name] = max(measured[name], diff)
    passed = finite and all(measured[n] >= threshold[n] if cosine else measured[n] <= threshold[n] for n in names)
    record = {"metric": "least cosine to fp32" if cosine else "max |difference| to fp32", "measured": measured,
              "threshold": threshold, "finite": finite, "passed": bool(passed)}
    if gate.get("teacher") and "teacher/tokens" in data:
        past = [(t.name, tuple(0 if isinstance(d, str) else d for d in t.shape)) for t in info.inputs
                if t.name.startswith("past_")]
        presents = [t.name for t in info.outputs if t.name.startswith("present_")]
        record["teacher_forced"] = teacher_forced(session, data, gate["teacher"], past, presents)
        record["passed"] = bool(record["passed"] and record["teacher_forced"]["passed"])
    return record


def summary(record: dict[str, Any]) -> str:
    """The measured agreement and the gate, in a few words."""
    if "measured" not in record:
        return record.get("reason", "not measured")
    cosine = record["metric"].startswith("least cosine")
    worst = (min if cosine else max)(record["measured"].items(), key=lambda item: item[1])
    word = "least cosine to fp32" if cosine else "max |difference| to fp32"
    text = f"{word} {worst[1]:.6g} ({worst[0]}; gate {'>=' if cosine else '<='} {record['threshold'][worst[0]]:g})"
    if not record["finite"]:
        text += ", NaN/Inf in the outputs"
    if teacher := record.get("teacher_forced"):
        if teacher.get("top1_agreement") is None:
            text += f", teacher-forced decode: {teacher.get('reason')}"
        else:
            text += (f", teacher-forced top-1 agreement {teacher['top1_agreement']:.3g} "
                     f"(gate >= {teacher['threshold']['top1_agreement']:g}) and least logit cosine "
                     f"{teacher['least_cosine']:.6g} (gate >= {teacher['threshold']['least_cosine']:g})")
    return text


# --- on the machine where the folder runs ----------------------------------------------------------------

def runtime_of(session: Any) -> dict[str, str]:
    """What ran the graph: the provider (or OpenVINO and its precision) and the runtime's version."""
    from .openvino import OpenVinoGraph

    if isinstance(session, OpenVinoGraph):
        import openvino

        return {"provider": session.get_providers()[0], "runtime": f"openvino {openvino.get_version()}"}
    import onnxruntime

    return {"provider": session.get_providers()[0], "runtime": f"onnxruntime {onnxruntime.__version__}"}


def _load(folder: Path, name: str, info: GraphInfo) -> dict[str, np.ndarray]:
    from .session import check_inside

    check = info.check
    path = check_inside(folder, check["file"], f"check file of graph '{name}'")
    if not path.is_file():
        raise ModelLoadError(f"{path}: graph '{name}''s check file is missing from the model folder")
    if not has_sha256(path, check["sha256"]):
        raise ModelLoadError(f"{path}: sha256 differs from the manifest (file damaged or replaced)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: unreadable check file ({e})") from None


def check_graph(folder: Path, name: str, info: GraphInfo, session: Any) -> dict[str, Any]:
    """Run graph ``name``'s stored check on ``session`` here; the result with where and how it ran."""
    from .openvino import OpenVinoGraph

    if isinstance(session, OpenVinoGraph):  # an fp32 copy run in f32 is gated as fp32 is
        weights = info.backends["openvino"]["weights"]
        lossy = (weights, session.precision) != ("fp32", "f32")
        precision = ("int8" if weights == "int8" else {"f32": "fp32"}.get(session.precision, session.precision)) + (
            " (fp16 weights)" if weights == "fp16" else "")
    else:
        lossy, precision = info.precision != "fp32", info.precision
    started = time.perf_counter()
    record = run_check(session, _load(folder, name, info), gate_of(info, lossy), info)
    return {"graph": name, "precision": precision, **runtime_of(session), "machine": this_machine().to_dict(),
            **record, "seconds": round(time.perf_counter() - started, 3)}


def _record_key(folder: Path, name: str, info: GraphInfo, session: Any) -> str:
    """What the result depends on: the graph's files, its check, what runs it, the machine, the procedure."""
    from .openvino import OpenVinoGraph

    entry = info.backends.get("openvino", {})
    files = ({info.file: info.sha256, **info.data} if not isinstance(session, OpenVinoGraph) or entry.get("reads_graph")
             else entry["files"])
    parts = {"files": files, "check": info.check["sha256"], "precision": info.precision, **runtime_of(session),
             "machine": this_machine().to_dict(), "procedure": CHECK_PROCEDURE}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def check_folder(folder: Path, manifest: Manifest, sessions: dict[str, Any], *, reuse: bool) -> list[dict]:
    """Each opened graph's check result on this machine, in the order of ``sessions``: recorded ones reused when
    ``reuse`` (same graph files, check, provider, runtime version, machine and procedure), the others run and
    recorded (a result under ``recorded`` says whether it was reused)."""
    records = read_user_record(RECORD_NAME)
    results, changed = [], False
    for name, session in sessions.items():
        info = manifest.graphs[name]
        key = _record_key(folder, name, info, session)
        if reuse and key in records:
            results.append({**records[key], "recorded": True})
            continue
        result = check_graph(folder, name, info, session)
        records.pop(key, None)
        records[key] = {**result, "clipblip": __version__, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        results.append({**records[key], "recorded": False})
        changed = True
    if changed:
        write_user_record(RECORD_NAME, records, RECORD_LIMIT)  # without a writable cache, checks run each load
    return results


def ensure_checked(folder: Path, manifest: Manifest, sessions: dict[str, Any],
                   fallback: Callable[[str], Any] | None = None) -> list[dict]:
    """Before a folder answers: every opened graph passed its check on this machine (run the first time, then
    recorded). A graph that fails is refused with an AccuracyError naming it, the machine and the numbers,
    unless ``fallback(name)`` opens it another way (provider "auto": ONNX Runtime instead of an OpenVINO copy
    that fails here), which ``sessions`` then holds if its own check passes."""
    from .openvino import OpenVinoGraph

    results = check_folder(folder, manifest, sessions, reuse=True)
    for i, r in enumerate(results):
        if not r["passed"] and fallback is not None and isinstance(sessions[r["graph"]], OpenVinoGraph):
            sessions[r["graph"]] = fallback(r["graph"])
            results[i] = check_folder(folder, manifest, {r["graph"]: sessions[r["graph"]]}, reuse=True)[0]
    failed = [r for r in results if not r["passed"]]
    if failed:
        r = failed[0]
        machine = this_machine()
        raise AccuracyError(
            f"{folder}: graph '{r['graph']}' ({r['precision']}, {r['provider']}) fails its check on this machine, "
            f"{machine.cpu} [{' '.join(machine.flags)}], {r['runtime']}: {summary(r)}; its answers here would "
            f"be wrong, so it is refused. Run `clipblip verify {folder}` for every graph, then export the model "
            f"again (--precision fp32 keeps fp32 answers everywhere)")
    return results


def verify_folder(folder: str | os.PathLike, provider: str = "auto", threads: int | None = None) -> list[dict]:
    """``clipblip verify``: every graph of the folder opened on ``provider`` here and its check run anew (and
    recorded, so that the engine need not run it again). A graph that cannot be opened (missing or damaged file,
    no kernel for it) is a failed result whose ``reason`` says why; nothing is raised for a failed graph."""
    from ..errors import ClipblipError
    from . import openvino
    from .session import backend_for, open_graph

    folder = Path(folder)
    manifest = Manifest.load(folder)
    if provider == "openvino" and all(backend_for(g, provider) != openvino.BACKEND for g in manifest.graphs.values()):
        raise openvino.no_copy(folder)
    results = []
    for name, info in manifest.graphs.items():
        try:
            session = open_graph(folder, name, info, provider, threads, verify=True)
            results += check_folder(folder, manifest, {name: session}, reuse=False)
        except ClipblipError as e:  # this graph cannot be opened or checked here: a failure of its own
            results.append({"graph": name, "precision": info.precision, "provider": provider,
                            "machine": this_machine().to_dict(), "passed": False, "reason": str(e)})
    return results
