"""A graph's copy for OpenVINO: IR with fp16 weights, gated against the fp32 graph like any lower precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..engine import openvino as backend
from ..engine.checks import summary
from ..manifest import GraphInfo, sha256_of
from .optimize import accuracy_gate
from .specs import GraphSpec

__all__ = ["openvino_copy"]


def openvino_copy(spec: GraphSpec, fp32_path: Path, check: dict[str, np.ndarray], info: GraphInfo,
                  folder: Path | None = None) -> dict[str, Any]:
    """Write ``<graph>.openvino.xml/.bin`` into ``folder`` (default: beside the fp32 graph) and gate them on this
    CPU with the graph's stored ``check``, as a lower precision is gated.

    Returns the manifest's ``backends["openvino"]`` entry; without ``files`` (and leaving no file)
    when OpenVINO is not installed or the copy fails its gate, ``reason`` saying which.
    """
    if not backend.available():
        return {"reason": f"OpenVINO is not installed ({backend.INSTALL})"}
    import openvino as ov

    xml = (folder or fp32_path.parent) / f"{spec.name}.openvino.xml"
    files = [xml, xml.with_suffix(".bin")]
    try:
        ov.save_model(ov.convert_model(str(fp32_path)), str(xml), compress_to_fp16=True)
        names = ([t.name for t in spec.inputs], [t.name for t in spec.outputs])
        candidate = backend.open_openvino(xml, None, names, cache=False)
        record = accuracy_gate(candidate, check, info)
    except Exception as e:  # OpenVINO's converter and runtime raise their own types
        record = {"passed": False, "reason": f"OpenVINO: {type(e).__name__}: {str(e).strip().splitlines()[0]}"}
    if not record.get("passed"):
        for file in files:
            file.unlink(missing_ok=True)
        return {"reason": record.get("reason") or f"failed its gate: {summary(record)}", "accuracy": record}
    return {"file": xml.name, "files": {f.name: sha256_of(f) for f in files}, "weights": "fp16",
            "inference": "bf16 where the CPU has AMX or AVX-512 BF16, else f32",
            "accuracy": record}

