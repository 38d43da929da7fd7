"""What every benchmark shares: the record of where it ran, interleaved timing, its inputs, exports made once,
and its results written as JSON and markdown tables.

Scripts import it as ``common`` (``python benchmarks/X.py`` puts benchmarks/ on sys.path); importing it puts this
checkout's root first on sys.path, so that the clipblip measured is this checkout's, installed or not. It imports
nothing heavy itself: clipblip, numpy, matplotlib and PIL are imported by the functions that need them.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from clipblip import torchvision_cpu

torchvision_cpu.install()  # before transformers' image processors import torchvision beside the CPU torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

__all__ = ["REPO", "PHOTOS", "say", "environment", "versions", "git_commit", "machine_text", "commit_text",
           "measured_line", "SelfTimed", "interleaved", "describe", "median_ms", "latency", "TO_EAGER_FP32",
           "summarise", "sample_photo", "sample_image", "export_once", "table", "cell", "write_results"]

PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")  # matplotlib ships them: the same inputs everywhere


def say(message: str) -> None:
    """Progress, on stderr (stdout is the result)."""
    print(message, file=sys.stderr, flush=True)


# --- where it ran ---------------------------------------------------------------------------------------


def environment(threads: int | None, *modules: str, **extra) -> dict:
    """The record every result carries: the CPU as its kernels see it (CPUID, clipblip.engine.machine: model,
    int8-relevant flags, class of int8 kernels), cores, ``threads``, Python, platform, clipblip's version and
    this checkout's commit, then the version of each of ``modules`` (:func:`versions`), then ``extra``."""
    import clipblip
    from clipblip.engine.machine import this_machine

    machine = this_machine()
    return {"cpu": machine.cpu, "cpu_flags": list(machine.flags), "cpu_class": machine.int8_kernels,
            "cpu_read_from": machine.source, "cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "platform": platform.platform(), "clipblip": clipblip.__version__,
            "commit": git_commit(), **versions(*modules), **extra}


def versions(*modules: str) -> dict[str, str | None]:
    """Each module's version: its ``__version__`` where this process imported it (what ran), else its
    distribution's, read without importing it (a server's libraries, say); None where it is not installed."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    found: dict[str, str | None] = {}
    distributions = None
    for name in modules:
        loaded = getattr(sys.modules.get(name), "__version__", None)
        if loaded:
            found[name] = str(loaded)
            continue
        distributions = packages_distributions() if distributions is None else distributions
        found[name] = None
        for distribution in distributions.get(name, [name]):
            try:
                found[name] = version(distribution)
                break
            except PackageNotFoundError:
                continue
    return found


def git_commit() -> str | None:
    """This checkout's commit, with " + uncommitted changes" where tracked files differ from it; None where it is
    not a git checkout (the copy on a lent GPU machine, say)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if not head:
        return None
    return head + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine_text(env: dict) -> str:
    """The machine of an :func:`environment` record in words: CPU model, cores, int8 kernel class and flags."""
    from clipblip.engine.machine import INT8_FLAGS

    flags = " ".join(env["cpu_flags"]) or f"none of {' '.join(INT8_FLAGS)}"
    return f"{env['cpu']} ({env['cores']} cores; int8 kernels: {env['cpu_class']}; {flags})"


def commit_text(env: dict) -> str:
    """The commit of an :func:`environment` record, short: "commit 4a277afa08f4" (+ uncommitted changes)."""
    sha, _, changes = (env.get("commit") or "unknown").partition(" ")
    return f"commit {sha[:12]}" + (f" {changes}" if changes else "")


def measured_line(date: str, env: dict, *modules: str) -> str:
    """The sentence that opens a results.md: when, on which machine (:func:`machine_text`) and threads, with which
    Python, versions of ``modules`` and clipblip commit."""
    threads = f", {env['threads']} threads" if env.get("threads") is not None else ""
    libraries = "".join(f", {name} {env.get(name) or 'not installed'}" for name in modules)
    return (f"Measured {date} on {machine_text(env)}{threads}; Python {env['python']}{libraries}; clipblip "
            f"{env['clipblip']} at {commit_text(env)}.")


# --- timing ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelfTimed:
    """What a variant that times itself returns (a worker in another process, timing its own call)."""

    seconds: float
    value: object = None


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, *, warmup: int = 1, pause: float = 0.0,
                order: str = "fixed", deadline: float | None = None, errors: dict[str, str] | None = None,
                results: dict[str, object] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each variant, timed interleaved in one process: ``warmup`` untimed rounds, then
    ``rounds`` rounds of one call of each, every call after ``pause`` seconds (so that the thread pools of the
    previous call have stopped spinning on the cores this one needs). ``order`` of the calls in a round: "fixed",
    "rotate" (each round starts one variant later) or "shuffle" (``random.shuffle``, seed it for a repeatable run).
    With ``deadline`` (a ``time.monotonic()`` value) the rounds stop once it has passed, after at least 3.
    With ``errors``, a variant that raises is dropped and its one-line error kept there; without, it propagates.
    A variant that returns :class:`SelfTimed` counts the seconds it measured; ``results`` keeps each variant's
    last value (a :class:`SelfTimed`'s ``value``)."""
    if order not in ("fixed", "rotate", "shuffle"):
        raise ValueError(f"order {order!r}: fixed, rotate or shuffle")
    live = dict(variants)
    times: dict[str, list[float]] = {name: [] for name in variants}

    def call(name: str, timed: bool) -> None:
        if pause:
            time.sleep(pause)
        start = time.perf_counter()
        try:
            value = live[name]()
        except Exception as e:  # noqa: BLE001  a variant that cannot run is reported, the others go on
            if errors is None:
                raise
            errors[name] = describe(e)
            del live[name]
            return
        seconds = time.perf_counter() - start
        if isinstance(value, SelfTimed):
            seconds, value = value.seconds, value.value
        if timed:
            times[name].append(seconds)
        if results is not None:
            results[name] = value

    for _ in range(warmup):
        for name in list(live):
            call(name, timed=False)
    names = list(live)
    for round_ in range(rounds):
        if deadline is not None and round_ >= 3 and time.monotonic() > deadline:
            break
        if order == "rotate":
            names = names[1:] + names[:1] if round_ else names
        elif order == "shuffle":
            random.shuffle(names)
        for name in names:
            if name in live:
                call(name, timed=True)
    return {name: samples for name, samples in times.items() if samples}


def describe(error: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn()`` in ms over ``repeat`` runs, after one warm-up run."""
    return statistics.median(interleaved({"fn": fn}, repeat)["fn"]) * 1000


def latency(seconds: Sequence[float]) -> dict:
    """The samples of one variant (seconds) as ms: median (p50), p95 and least, and how many there were."""
    import numpy as np

    ms = np.asarray(seconds, dtype=np.float64) * 1000
    return {"p50_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)), "min_ms": float(ms.min()),
            "samples": len(ms)}


TO_EAGER_FP32 = {"ratio_to_eager_fp32": "eager fp32"}


def summarise(times: dict[str, list[float]], *, items: int | None = None,
              ratios: dict[str, str] = TO_EAGER_FP32) -> dict[str, dict]:
    """Per variant of one run (:func:`interleaved`'s seconds): :func:`latency`, the throughput in items/s where
    each call handles ``items``, and per key of ``ratios`` whose baseline variant was measured in the same run, the
    baseline's p50 over the variant's (above 1: faster than the baseline)."""
    out = {name: latency(samples) for name, samples in times.items()}
    for row in out.values():
        if items is not None:
            row["throughput_per_s"] = items / (row["p50_ms"] / 1000)
        for key, base in ratios.items():
            if base in out:
                row[key] = out[base]["p50_ms"] / row["p50_ms"]
    return out


# --- inputs ---------------------------------------------------------------------------------------------


def sample_photo(name: str = PHOTOS[0]) -> Path:
    """One of the photos matplotlib ships (:data:`PHOTOS`): a file every benchmark can read the same."""
    from matplotlib import cbook

    return Path(cbook.get_sample_data(name, asfileobj=False))


def sample_image(name: str = PHOTOS[0]):
    """:func:`sample_photo` as an RGB PIL image, read now."""
    from PIL import Image

    with Image.open(sample_photo(name)) as image:
        return image.convert("RGB")


def export_once(model: str, folder: Path, *, task: str | None = None, precision: str = "fp32",
                calibration: Path | None = None, progress: Callable[[str], None] = say) -> Path:
    """``folder``, exported from ``model`` unless it already holds that export (same model and precision, task
    where one is given, calibrated where ``calibration`` is given), which is reused: benchmarks keep their exports
    between runs (--work, --models)."""
    from clipblip.errors import ClipblipError
    from clipblip.manifest import Manifest

    folder = Path(folder)
    try:
        manifest = Manifest.load(folder)
        source = manifest.source
        calibrated = any("calibration" in g.backends.get("openvino", {}) for g in manifest.graphs.values())
        if source.get("model") == model and source.get("precision") == precision and task in (None, source.get("task")) \
                and calibrated == (calibration is not None):
            return folder
    except ClipblipError:  # absent, or not a complete export
        pass
    from clipblip.export import export_model

    progress(f"exporting {model}{' --task ' + task if task else ''} --precision {precision}"
             f"{f' --calibration {calibration}' if calibration else ''} to {folder}")
    export_model(model, folder, task=task, precision=precision, force=folder.exists(), calibration=calibration)
    return folder


# --- results --------------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """A markdown table's lines: the headers, the rule (``align``: a letter a column, "r" right-aligned, anything
    else left), then one line a row (each cell ``str()``-ed; format numbers with :func:`cell`)."""
    rule = ["---:" if align[i:i + 1] == "r" else "---" for i in range(len(headers))]
    return [f"| {' | '.join(headers)} |", f"|{'|'.join(rule)}|", *(f"| {' | '.join(map(str, row))} |" for row in rows)]


def cell(value: float | None, digits: int = 1, suffix: str = "") -> str:
    """A number for a table: ``digits`` decimals and ``suffix`` ("×", " ms"), or "—" where there is none (None,
    NaN)."""
    if value is None or value != value:
        return "—"
    return f"{value:.{digits}f}{suffix}"


def write_results(path: Path, report: dict, markdown: str | None = None) -> None:
    """``report`` as JSON at ``path`` (results.json, say) and ``markdown``, if given, beside it with the suffix .md;
    the folder is made if missing. Each file is written whole or not at all (a ``.partial`` file renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files = {path: json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n"}
    if markdown is not None:
        files[path.with_suffix(".md")] = markdown if markdown.endswith("\n") else markdown + "\n"
    for target, text in files.items():
        partial = target.with_name(target.name + ".partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, target)
