"""ONNX Runtime sessions: ask for a provider explicitly, then verify what the session got."""

from __future__ import annotations

import os
import re
import warnings
from importlib import metadata
from pathlib import Path

import onnxruntime as ort

from ..errors import CompatibilityError, ModelLoadError, ProviderError, UnsafeArtifactError, UsageError
from ..manifest import GraphInfo, external_data_paths, has_sha256
from . import openvino
from .machine import this_machine

__all__ = ["PROVIDERS", "resolve_providers", "open_graph", "installed_runtimes", "external_data_paths"]

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def installed_runtimes() -> list[str]:
    """The ONNX Runtime distributions installed: more than one means they overwrite each other."""
    names = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return found


def resolve_providers(provider: str) -> list[str]:
    """Execution providers for ``provider``, most preferred first.

    "cpu"; "cuda" (ProviderError if CUDA is not usable: never a silent CPU fallback); "auto" (CUDA
    when available, else CPU: the way to ask for the fallback).
    """
    runtimes = installed_runtimes()
    if len(runtimes) > 1:
        message = (f"{' and '.join(runtimes)} are installed together; they install the same module and "
                   f"break each other: uninstall all and install one")
        if provider == "cuda":
            raise ProviderError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    available = ort.get_available_providers()
    if provider == "auto":
        return [PROVIDERS["cuda"], PROVIDERS["cpu"]] if PROVIDERS["cuda"] in available else [PROVIDERS["cpu"]]
    if provider not in PROVIDERS:
        raise UsageError(f"provider {provider!r}: choose auto, cpu, cuda or openvino")
    if PROVIDERS[provider] not in available:
        raise ProviderError(
            f"provider {provider!r}: ONNX Runtime here offers only {', '.join(available)} "
            f"(install the onnxruntime-gpu build and a CUDA runtime for 'cuda')"
        )
    return [PROVIDERS[provider]]


SPIN_US = "1000"  # how long an idle pool's threads spin for work before they sleep
THREADING_POLICIES = ("spin-1ms", "no-spin", "shared")
# How sessions share the cores (benchmarks/serve_mixed.py; AMD EPYC Zen 4, 2 cores, int8 base models):
#   "spin-1ms"  each session its own pool, idle threads spin 1 ms, then sleep: the fastest single stream
#               (caption 20 tokens 721-737 ms vs 773-932 without spinning; CLIP image 44 vs 50-55 ms);
#   "no-spin"   each session its own pool, idle threads sleep at once: the most throughput when several
#               models serve at once (CLIP, caption and VQA under load together: +14 %, +29 %, +14 %);
#   "shared"    ONNX Runtime's global pools, one for every session: between the two under mixed load,
#               and 14 % less throughput for one model alone.
# The engine spins 1 ms; `clipblip serve` with several models turns spinning off (set_threading);
# CLIPBLIP_ORT_THREADING, read once at import, overrides both (the benchmarks set it).
THREADING = os.environ.get("CLIPBLIP_ORT_THREADING", "spin-1ms")
THREADING_CHOSEN = "CLIPBLIP_ORT_THREADING" in os.environ
_global_pools_sized = False


def set_threading(policy: str) -> None:
    """The policy for sessions opened from now on, unless CLIPBLIP_ORT_THREADING chose one."""
    global THREADING
    if policy not in THREADING_POLICIES:
        raise UsageError(f"threading {policy!r}: one of {', '.join(THREADING_POLICIES)}")
    if not THREADING_CHOSEN:
        THREADING = policy


def session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None and threads < 1:
        raise UsageError(f"threads={threads}: must be at least 1")
    global _global_pools_sized
    if THREADING == "shared":
        if not _global_pools_sized:  # before the first session of the process: its sizes hold for all of them
            ort.set_global_thread_pool_sizes(threads or 0, 1)
            _global_pools_sized = True
        options.use_per_session_threads = False
        return options
    # an engine runs its sessions one after another (image tower, then text tower or decoder steps),
    # each with its own thread pool: threads of the pool just used must not spin on the cores the next
    # session needs for long (zero-shot classify on 2 cores: 52 ms with ORT's default, 29 ms with 1 ms)
    if THREADING == "no-spin":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    else:
        options.add_session_config_entry("session.intra_op.spin_duration_us", SPIN_US)
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def check_inside(folder: Path, name: str, what: str) -> Path:
    """``folder / name`` if it stays inside ``folder`` (no absolute path, '..', or link leading out)."""
    if not name or os.path.isabs(name) or ".." in Path(name).parts:
        raise UnsafeArtifactError(f"{folder}: {what} {name!r} points outside the model folder; refused")
    target = folder / name
    if not target.resolve().is_relative_to(folder.resolve()):
        raise UnsafeArtifactError(f"{target}: {what} is a link that leaves the model folder; refused")
    return target


def compatibility_error(path: Path, name: str, message: str) -> CompatibilityError | None:
    """A CompatibilityError when ONNX Runtime refused the graph for its IR version or opset."""
    if re.search(r"IR version|opset|Opset", message):
        return CompatibilityError(f"{path}: graph '{name}' needs a newer ONNX Runtime than the installed "
                                  f"onnxruntime {ort.__version__} ({message.splitlines()[0]})")
    return None


def backend_for(info: GraphInfo, provider: str) -> str:
    """"openvino" or "onnxruntime" for this graph: OpenVINO when asked for (``provider="openvino"``) and
    the folder holds the graph for it, or with "auto" where it was measured faster: an OpenVINO copy of
    the graph, OpenVINO installed, no CUDA, and a CPU of a class the copy names (``auto_on``: "vnni", "amx"…;
    "bf16": wherever OpenVINO says the CPU computes bf16)."""
    entry = info.backends.get(openvino.BACKEND, {})
    if not has_copy(entry):
        return "onnxruntime"
    if provider == "openvino":
        return openvino.BACKEND
    if provider != "auto" or not openvino.available() or PROVIDERS["cuda"] in ort.get_available_providers():
        return "onnxruntime"
    auto_on = entry.get("auto_on", ())
    if this_machine().int8_kernels in auto_on or ("bf16" in auto_on and openvino.inference_precision() == "bf16"):
        return openvino.BACKEND
    return "onnxruntime"


def has_copy(entry: dict) -> bool:
    """Whether a backends entry gives the runtime something to run: files of its own, or the graph itself."""
    return "files" in entry or bool(entry.get("reads_graph"))


def checked_file(folder: Path, name: str, file: str, sha256: str, verify: bool) -> Path:
    """``folder / file`` if it lies inside the folder, exists and (``verify``) has the manifest's hash."""
    path = check_inside(folder, file, "graph file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: graph '{name}' is missing from the model folder")
    if verify and not has_sha256(path, sha256):
        raise ModelLoadError(f"{path}: sha256 differs from the manifest (file damaged or replaced)")
    return path


def open_graph(folder: Path, name: str, info: GraphInfo, provider: str, threads: int | None,
               verify: bool = True) -> ort.InferenceSession | openvino.OpenVinoGraph:
    """Open one graph of a model folder, checking its hash, its I/O names and the provider it got.

    Files are checked before a runtime sees them: the graph and any external data it names must
    lie inside the model folder. ``provider="openvino"`` runs the graphs the folder holds for OpenVINO
    there and the others on ONNX Runtime's CPU provider.
    """
    path = checked_file(folder, name, info.file, info.sha256, verify)
    check_external_data(folder, name, path, info.data, verify)
    if backend_for(info, provider) == openvino.BACKEND:
        entry = info.backends[openvino.BACKEND]
        if not entry.get("reads_graph"):  # an IR of its own, its weights beside it
            path = {file: checked_file(folder, name, file, sha, verify) for file, sha in entry["files"].items()}[
                entry["file"]]
        names = ([t.name for t in info.inputs], [t.name for t in info.outputs])
        try:
            session = openvino.open_openvino(path, threads, names, inference=entry.get("inference", "native"))
        except (ModelLoadError, ProviderError):
            if provider == "openvino":
                raise
            session = None  # "auto": what OpenVINO cannot load, ONNX Runtime may; if not, its error is the one said
        if session is not None:
            check_names(path, name, info, session)
            return session
    providers = resolve_providers("cpu" if provider == "openvino" else provider)
    try:
        session = ort.InferenceSession(str(path), session_options(threads), providers=providers)
    except Exception as e:  # ORT raises its own exception types; report one line
        message = str(e)
        raise compatibility_error(path, name, message) or ModelLoadError(
            f"{path}: ONNX Runtime cannot load graph '{name}': {message.splitlines()[0]}") from None
    if provider != "auto" and session.get_providers()[0] != providers[0]:
        raise ProviderError(f"{path}: asked for {providers[0]}, ONNX Runtime gave {session.get_providers()[0]}")
    check_names(path, name, info, session)
    return session


def check_external_data(folder: Path, name: str, path: Path, listed: dict[str, str], verify: bool) -> None:
    """The external data files ONNX graph ``path`` names lie inside the folder and (``verify``) are the ``listed``
    ones, with their hashes."""
    for location in external_data_paths(path):
        check_inside(folder, location, f"external data of graph '{name}'")
        if verify and location not in listed:
            raise ModelLoadError(f"{path}: names external data {location!r}, which the manifest does not list")
        if verify:
            checked_file(folder, name, location, listed[location], verify)


def check_names(path: Path, name: str, info: GraphInfo, session) -> None:
    """ModelLoadError unless the opened graph has the manifest's input and output names, in order."""
    found = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    expected = ([t.name for t in info.inputs], [t.name for t in info.outputs])
    if found != expected:
        raise ModelLoadError(
            f"{path}: graph '{name}' has inputs {found[0]} and outputs {found[1]}, "
            f"the manifest says inputs {expected[0]} and outputs {expected[1]}"
        )
