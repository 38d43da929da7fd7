"""ONNX Runtime sessions: ask for a provider explicitly, then verify what the session got."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from ..errors import ModelLoadError, ProviderError, UsageError
from ..manifest import GraphInfo, sha256_of

__all__ = ["PROVIDERS", "resolve_providers", "open_graph"]

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def resolve_providers(provider: str) -> list[str]:
    """Execution providers for ``provider`` ("auto", "cpu" or "cuda"), most preferred first."""
    available = ort.get_available_providers()
    if provider == "auto":
        return [PROVIDERS["cuda"], PROVIDERS["cpu"]] if PROVIDERS["cuda"] in available else [PROVIDERS["cpu"]]
    if provider not in PROVIDERS:
        raise UsageError(f"provider {provider!r}: choose auto, cpu or cuda")
    if PROVIDERS[provider] not in available:
        raise ProviderError(
            f"provider {provider!r}: ONNX Runtime here offers only {', '.join(available)} "
            f"(install the onnxruntime-gpu build and a CUDA runtime for 'cuda')"
        )
    return [PROVIDERS[provider]]


def session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        if threads < 1:
            raise UsageError(f"threads={threads}: must be at least 1")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def open_graph(folder: Path, name: str, info: GraphInfo, provider: str, threads: int | None,
               verify: bool = True) -> ort.InferenceSession:
    """Open one graph of a model folder, checking its hash, its I/O names and the provider it got."""
    path = folder / info.file
    if not path.is_file():
        raise ModelLoadError(f"{path}: graph '{name}' is missing from the model folder")
    if verify and sha256_of(path) != info.sha256:
        raise ModelLoadError(f"{path}: sha256 differs from the manifest (file damaged or replaced)")
    providers = resolve_providers(provider)
    try:
        session = ort.InferenceSession(str(path), session_options(threads), providers=providers)
    except Exception as e:  # ORT raises its own exception types; report one line
        raise ModelLoadError(f"{path}: ONNX Runtime cannot load graph '{name}': {str(e).splitlines()[0]}") from None
    if provider != "auto" and session.get_providers()[0] != providers[0]:
        raise ProviderError(f"{path}: asked for {providers[0]}, ONNX Runtime gave {session.get_providers()[0]}")
    found = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    expected = ([t.name for t in info.inputs], [t.name for t in info.outputs])
    if found != expected:
        raise ModelLoadError(
            f"{path}: graph '{name}' has inputs {found[0]} and outputs {found[1]}, "
            f"the manifest says inputs {expected[0]} and outputs {expected[1]}"
        )
    return session
