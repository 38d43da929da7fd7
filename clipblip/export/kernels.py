"""Tiny helper graphs the engine ships (built here with onnx; the engine only reads the files).

``gather_rows.onnx``: rows of a tensor by index on the device where it lives, so that beam search
reorders its KV cache without a round trip through the host.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

__all__ = ["gather_rows_graph", "write_gather_rows"]

OPSET = 17
IR_VERSION = 8  # read by every onnxruntime clipblip supports


def gather_rows_graph() -> onnx.ModelProto:
    """``rows = Gather(data, indices, axis=0)``: data float32 (batch, heads, seq, head_dim), indices int64."""
    data = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", "heads", "seq", "head_dim"])
    indices = helper.make_tensor_value_info("indices", TensorProto.INT64, ["rows"])
    rows = helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["rows", "heads", "seq", "head_dim"])
    graph = helper.make_graph([helper.make_node("Gather", ["data", "indices"], ["rows"], axis=0)], "gather_rows",
                              [data, indices], [rows])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="clipblip")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_gather_rows(path: str | Path) -> None:
    onnx.save(gather_rows_graph(), str(path))


if __name__ == "__main__":  # python -m clipblip.export.kernels: rewrites the engine's copy
    write_gather_rows(Path(__file__).resolve().parents[1] / "engine" / "graphs" / "gather_rows.onnx")
