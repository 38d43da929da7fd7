"""After the fp32 parity gate: fuse transformer patterns, and make int8 / fp16 graphs that pass a gate."""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers import optimizer
from onnxruntime.transformers.float16 import convert_float_to_float16

from ..errors import ExportError, ParityError
from .convert import check_parity
from .specs import GraphSpec

__all__ = ["PRECISIONS", "fuse_graph", "lower_precision"]

PRECISIONS = ("fp32", "int8", "fp16")
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "LayerNormalization", "QuickGelu",
             "Gelu", "FastGelu", "BiasGelu", "EmbedLayerNormalization", "SkipSimplifiedLayerNormalization")


def fuse_graph(spec: GraphSpec, path: Path) -> dict[str, Any]:
    """Rewrite ``path`` with ONNX Runtime's transformer fusions if the result still passes parity.

    Returns the record for the manifest: the model type, the fused-operator counts and the parity
    of the fused graph; a fusion that breaks parity is dropped and the reason recorded.
    """
    if spec.fusion is None:
        return {"applied": False, "reason": "no fusion pattern for this graph"}
    fused_path = path.with_name(path.stem + ".fused.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = optimizer.optimize_model(str(path), opt_level=0, **spec.fusion)
    counts = Counter(node.op_type for node in model.model.graph.node)
    model.save_model_to_file(str(fused_path))
    record = {"applied": True, **spec.fusion, "fused": {op: counts[op] for op in FUSED_OPS if counts[op]}}
    try:
        record["parity"] = check_parity(spec, fused_path)
    except ParityError as e:
        fused_path.unlink()
        return {**record, "applied": False, "reason": f"fused graph failed parity: {e}"}
    os.replace(fused_path, path)
    return record


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each batch row, flattened."""
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    denominator = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(denominator > 0, (a * b).sum(1) / np.maximum(denominator, 1e-300), 1.0)


def accuracy_gate(spec: GraphSpec, reference: Path, candidate: Path) -> dict[str, Any]:
    """Run both graphs on the check inputs; per gated output the least cosine to fp32, and NaN/Inf."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # fp16 kernels are a CUDA matter: gate on CUDA where this ONNX Runtime has it
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        sessions = [ort.InferenceSession(str(p), options, providers=providers) for p in (reference, candidate)]
    except Exception as e:  # ORT's own exception types; the gate fails, the export keeps fp32
        return {"passed": False, "reason": f"cannot run the graph on {providers[0]}: {str(e).splitlines()[0]}"}
    names = [t.name for t in spec.outputs]
    least = {name: 1.0 for name in spec.gate}
    finite = True
    generator = torch.Generator().manual_seed(2)
    for sizes in spec.check_sizes:
        feeds = {k: v.numpy() for k, v in spec.sample(sizes, generator).items()}
        try:
            want, got = (dict(zip(names, s.run(names, feeds))) for s in sessions)
        except Exception as e:  # a kernel missing for this precision on this provider
            return {"passed": False, "reason": f"cannot run the graph on {providers[0]}: {str(e).splitlines()[0]}"}
        finite &= all(np.all(np.isfinite(v)) for v in got.values())
        for name in spec.gate:
            least[name] = min(least[name], float(_cosines(want[name], got[name]).min()))
    passed = finite and all(least[name] >= threshold for name, threshold in spec.gate.items())
    return {"metric": "cosine to fp32, least over rows and check sizes", "least": least,
            "threshold": dict(spec.gate), "finite": bool(finite), "passed": bool(passed), "provider": providers[0]}


def lower_precision(spec: GraphSpec, fp32_path: Path, precision: str) -> tuple[Path, dict[str, Any]]:
    """Write an int8 (dynamic quantisation, per-channel weights) or fp16 (fp32 inputs/outputs kept)
    copy of the graph beside it, and gate it against the fp32 graph: (path, gate record).
    """
    out = fp32_path.with_name(f"{fp32_path.stem}.{precision}.onnx")
    try:
        if precision == "int8":
            logging.getLogger().setLevel(logging.ERROR)  # the quantiser logs advice on the root logger
            # fused contrib operators defeat shape inference: tell the quantiser the weights are float
            quantize_dynamic(str(fp32_path), str(out), weight_type=QuantType.QInt8, per_channel=True,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        elif precision == "fp16":
            model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
            onnx.save(model, str(out))
        else:
            raise ExportError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    except ExportError:
        raise
    except Exception as e:  # the quantiser and converter raise many types; report one line
        raise ExportError(f"graph '{spec.name}': {precision} conversion failed: {type(e).__name__}: {e}") from e
    return out, accuracy_gate(spec, fp32_path, out)
