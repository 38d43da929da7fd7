"""A graph's copy for OpenVINO, as the family's ``OpenVinoCopy`` for the export's precision says (fp32, fp16 or NNCF's
calibrated int8 weights), gated against the fp32 graph like any lower precision (an fp32 run by max difference)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..engine import openvino as backend
from ..engine.checks import summary
from ..families import OpenVinoCopy
from ..manifest import GraphInfo, sha256_of
from .optimize import accuracy_gate
from .specs import GraphSpec

__all__ = ["openvino_copy", "quantize_nncf", "reads_graph", "NNCF_INSTALL"]

NNCF_INSTALL = "pip install 'clipblip[openvino]'"


def openvino_copy(spec: GraphSpec, fp32_path: Path, traced_path: Path, check: dict[str, np.ndarray], info: GraphInfo,
                  copy: OpenVinoCopy, calibration: Iterable[dict[str, np.ndarray]] = (),
                  folder: Path | None = None) -> dict[str, Any]:
    """Gate on this CPU, with the graph's stored ``check``, OpenVINO running the graph as ``copy`` says: fp32 weights
    straight from the kept fp32 ONNX graph (no file of its own: the entry says ``reads_graph``; in f32 not gated here,
    as the graph itself passed parity: checked where it runs, with fp32's gate; in bf16 gated where this CPU computes
    bf16, else left to the machines that run it); fp16 weights converted from it, or int8 weights quantised by NNCF
    from the traced (unfused) graph on the ``calibration`` feeds, written as ``<graph>.openvino.xml/.bin`` into
    ``folder`` (default: beside the fp32 graph).

    Returns the manifest's ``backends["openvino"]`` entry; without ``files`` (and leaving no file) when OpenVINO (or
    NNCF, for int8) is not installed or the copy fails its gate, ``reason`` saying which.
    """
    plan = {"weights": copy.weights, "inference": copy.inference, "auto_on": list(copy.auto_on)}
    computes_bf16 = backend.available() and backend.inference_precision() == "bf16"
    if reads_graph(copy) and not (copy.inference == "bf16" and computes_bf16):
        # nothing of its own to write: the plan, checked where it runs (with fp32's own gate for f32); bf16 is gated
        # here only on a CPU that computes it
        return {"reads_graph": True, **plan, "accuracy": {"reason": "checked where it runs (first load, verify)"}}
    if not backend.available():
        return {"reason": f"OpenVINO is not installed ({backend.INSTALL})"}
    if copy.weights == "int8" and importlib.util.find_spec("nncf") is None:
        return {"reason": f"NNCF is not installed ({NNCF_INSTALL})"}
    import openvino as ov

    xml = (folder or fp32_path.parent) / f"{spec.name}.openvino.xml"
    files = [xml, xml.with_suffix(".bin")] if not reads_graph(copy) else []
    try:
        held_out = []
        if copy.weights == "int8":  # calibrated on three in four inputs, gated on the fourth too
            feeds = list(calibration)
            held_out = feeds[3::4]
            model = quantize_nncf(ov.convert_model(str(traced_path)), [f for i, f in enumerate(feeds) if i % 4 != 3])
        elif copy.weights == "fp16":
            model = ov.convert_model(str(fp32_path))
        if files:
            ov.save_model(model, str(xml), compress_to_fp16=copy.weights == "fp16")
        names = ([t.name for t in spec.inputs], [t.name for t in spec.outputs])
        candidate = backend.open_openvino(xml if files else fp32_path, None, names, cache=False,
                                          inference=copy.inference)
        record = accuracy_gate(candidate, check, info, lossy=copy.lossy)
        if held_out and record.get("passed"):
            record["held_out"] = held_out_gate(candidate, fp32_path, held_out, record["threshold"])
            record["passed"] = record["held_out"]["passed"]
            record["reason"] = None if record["passed"] else (
                f"on {len(held_out)} held-out calibration inputs: {record['held_out']['summary']}")
    except Exception as e:  # OpenVINO's converter and runtime and NNCF raise their own types
        record = {"passed": False, "reason": f"OpenVINO: {type(e).__name__}: {str(e).strip().splitlines()[0]}"}
    if not record.get("passed"):
        for file in files:
            file.unlink(missing_ok=True)
        return {"reason": record.get("reason") or f"failed its gate: {summary(record)}", "accuracy": record}
    where = {"file": xml.name, "files": {f.name: sha256_of(f) for f in files}} if files else {"reads_graph": True}
    return {**where, **plan, "accuracy": record}


def held_out_gate(candidate: Any, fp32_path: Path, feeds: list[dict[str, np.ndarray]],
                  threshold: dict[str, float]) -> dict[str, Any]:
    """The least cosine of each gated output to the fp32 graph's on calibration inputs NNCF did not see: real
    images and texts, where the stored check's are sample inputs."""
    from .convert import open_session

    reference = open_session(fp32_path)
    names = list(threshold)
    least = {name: 1.0 for name in names}
    for feed in feeds:
        for name, want, got in zip(names, reference.run(names, feed), candidate.run(names, feed)):
            want, got = want.reshape(len(want), -1).astype(np.float64), got.reshape(len(got), -1).astype(np.float64)
            cosine = (want * got).sum(1) / np.maximum(np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1), 1e-30)
            least[name] = min(least[name], float(cosine.min()))
    passed = all(least[name] >= threshold[name] for name in names)
    worst = min(least, key=least.get)
    return {"inputs": len(feeds), "least_cosine": least, "passed": passed,
            "summary": f"least cosine to fp32 {least[worst]:.6g} ({worst}; gate >= {threshold[worst]:g})"}


def reads_graph(copy: OpenVinoCopy) -> bool:
    """Whether OpenVINO runs the folder's own fp32 ONNX graph (fp32 weights: the same file, no copy on disk)."""
    return copy.weights == "fp32"


def quantize_nncf(model: Any, feeds: list[dict[str, np.ndarray]]) -> Any:
    """``model`` with int8 MatMuls whose activation ranges NNCF calibrated on ``feeds`` (static: no range is
    computed at run time), SmoothQuant moving activation outliers into the weights, and weights kept to 7 bits
    (OverflowFix.ENABLE) so that AVX2's 16-bit pair sums cannot saturate: the same answers on every CPU class."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    logging.getLogger("nncf").setLevel(logging.ERROR)  # its progress bars and notes are not ours
    return nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds),
                         advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE))
