"""OpenVINO runtime as a second CPU backend, for the graphs where it measures faster (extra ``openvino``).

Export writes such graphs a second time as OpenVINO IR (``GraphInfo.backends["openvino"]``), as the family's
``OpenVinoCopy`` for the export's precision says: fp32 weights run in f32 (fp32 folders; gated by max difference,
as fp32 is), NNCF's calibrated int8 (int8 folders of dual encoders), fp16 weights run in bf16 (bf16 folders; and
BLIP's int8 folders, bf16 where the CPU computes it). Provider "auto" runs a copy on the CPU classes it was measured
faster on (docs/speed.md, "OpenVINO copies"); ONNX Runtime stays faster on the decoder step, whose shapes change
every step.
"""

from __future__ import annotations

import importlib.util
import threading
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..errors import MissingExtraError, ModelLoadError, ProviderError
from ..manifest import cache_root

__all__ = ["BACKEND", "available", "inference_precision", "OpenVinoGraph", "open_openvino"]

BACKEND = "openvino"
INSTALL = "pip install 'clipblip[openvino]'"


def available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _openvino():
    try:
        import openvino
    except ImportError:
        raise MissingExtraError(f"provider 'openvino' needs OpenVINO, which is not installed: {INSTALL}") from None
    return openvino


@lru_cache(maxsize=1)
def _core():
    return _openvino().Core()


def inference_precision() -> str:
    """"bf16" where OpenVINO says the CPU computes it natively (AMX or AVX-512 BF16), else "f32"."""
    return "bf16" if "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"


# One compilation at a time: two OpenVINO compilations in threads at once (a folder's graphs open side by side) left
# the process's C locale at "C" (each saves and restores it around reading a graph), after which Python decoded
# every subprocess's output as ASCII.
_COMPILING = threading.Lock()


def no_copy(folder: Path) -> ProviderError:
    """The refusal of ``provider="openvino"`` for a folder that holds no graph for it."""
    return ProviderError(f"{folder}: holds no graph for OpenVINO; export the model again with OpenVINO installed "
                         f"({INSTALL}) to get one where its family has one (docs/speed.md, \"OpenVINO copies\")")


def cache_dir() -> Path:
    """Where OpenVINO keeps compiled graphs between processes (a new process then loads in a fraction)."""
    return cache_root() / "openvino"


class OpenVinoGraph:
    """A compiled OpenVINO graph with the part of ``onnxruntime.InferenceSession``'s interface the engines use."""

    def __init__(self, compiled: Any, path: Path, precision: str, names: tuple[list[str], list[str]] = ([], [])):
        self.compiled = compiled
        self.path = path
        self.precision = precision
        # a port may carry several tensor names: call it by the one the manifest uses
        self._inputs, self._outputs = ([SimpleNamespace(name=_port_name(port, wanted, i)) for i, port in enumerate(ports)]
                                       for ports, wanted in zip((compiled.inputs, compiled.outputs), names))
        self._index = {port.name: i for i, port in enumerate(self._outputs)}
        self._local = threading.local()  # one infer request per calling thread

    def get_inputs(self) -> list:
        return self._inputs

    def get_outputs(self) -> list:
        return self._outputs

    def get_providers(self) -> list[str]:
        return [f"OpenVINO CPU ({self.precision})"]

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer({i: feeds[port.name] for i, port in enumerate(self._inputs)}, share_inputs=False)
        return [np.array(request.get_output_tensor(self._index[name]).data)
                for name in (names or [o.name for o in self._outputs])]

    def __repr__(self) -> str:
        return f"OpenVinoGraph({str(self.path)!r}, precision={self.precision!r})"


def _port_name(port: Any, wanted: list[str], i: int) -> str:
    return wanted[i] if i < len(wanted) and wanted[i] in port.get_names() else port.get_any_name()


def open_openvino(path: Path, threads: int | None, names: tuple[list[str], list[str]] = ([], []),
                  cache: bool = True, inference: str = "native") -> OpenVinoGraph:
    """Compile an OpenVINO IR for this CPU in the ``inference`` precision ("f32", "bf16", or "native": bf16 where
    the CPU computes it, else f32) and check what OpenVINO made of it; ``cache`` keeps the compiled graph in
    :func:`cache_dir` for the next process."""
    precision = inference_precision() if inference not in ("f32", "bf16") else inference
    if precision == "bf16" and inference_precision() != "bf16":
        raise ProviderError(f"{path}: a bf16 graph, and OpenVINO says this CPU does not compute bf16 (no AMX or "
                            f"AVX-512 BF16); provider 'auto' runs the folder's fp32 graph here")
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    if cache:
        try:
            cache_dir().mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache_dir())
        except OSError:
            pass  # no writable cache: compile every time
    try:
        with _COMPILING:
            compiled = _core().compile_model(str(path), "CPU", config)
    except Exception as e:  # OpenVINO raises its own RuntimeError types; report one line
        raise ModelLoadError(f"{path}: OpenVINO cannot load this graph: {str(e).strip().splitlines()[0]}") from None
    got = compiled.get_property("INFERENCE_PRECISION_HINT")
    if got != getattr(_openvino().Type, precision) or compiled.get_property("EXECUTION_DEVICES") != ["CPU"]:
        raise ProviderError(f"{path}: asked OpenVINO for {precision} inference on the CPU, it gave {got} on "
                            f"{compiled.get_property('EXECUTION_DEVICES')}")
    return OpenVinoGraph(compiled, path, precision, names)
