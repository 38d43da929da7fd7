"""Tiny helper graphs the engine ships (built here with onnx; the engine only reads the files).

``gather_rows.onnx``: rows of a tensor by index on the device where it lives, so that beam search
reorders its KV cache without a round trip through the host.

``argmax_rows.onnx``: each row's greedy next token on the device where the logits live, so that greedy
decoding brings only token ids (and a per-row finiteness flag) back to the host, never the logits.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

__all__ = ["gather_rows_graph", "write_gather_rows", "argmax_rows_graph", "write_argmax_rows", "write_all"]

OPSET = 17
IR_VERSION = 8  # read by every onnxruntime clipblip supports
GRAPHS = Path(__file__).resolve().parents[1] / "engine" / "graphs"


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="clipblip")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def gather_rows_graph() -> onnx.ModelProto:
    """``rows = Gather(data, indices, axis=0)``: data float32 (batch, heads, seq, head_dim), indices int64."""
    data = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", "heads", "seq", "head_dim"])
    indices = helper.make_tensor_value_info("indices", TensorProto.INT64, ["rows"])
    rows = helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["rows", "heads", "seq", "head_dim"])
    graph = helper.make_graph([helper.make_node("Gather", ["data", "indices"], ["rows"], axis=0)], "gather_rows",
                              [data, indices], [rows])
    return _model(graph)


def argmax_rows_graph() -> onnx.ModelProto:
    """logits float32 (rows, vocab) → ``ids`` int64 (rows,), the index of each row's FIRST maximum (as
    ``torch.argmax`` and ``numpy.argmax``), and ``finite`` bool (rows,), whether the row has no NaN/Inf.

    ONNX's ArgMax leaves ties to the kernel (cuDNN's order is unspecified), so the first maximum is
    spelled out, with no shape computation that would send a tensor back to the host mid-graph: the
    running count of maxima (CumSum) is still 0 exactly before the first maximum, so the number of such
    positions is its index (a float32 count: exact for any vocabulary below 2**24). A row is finite when
    the sum of ``logits - logits`` is not NaN (inf - inf and NaN give NaN, every finite value 0). The
    ids of a row that is not finite mean nothing.
    """
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["rows", "vocab"])
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["rows"])
    finite = helper.make_tensor_value_info("finite", TensorProto.BOOL, ["rows"])
    node = helper.make_node
    nodes = [
        node("Constant", [], ["axis"], value=helper.make_tensor("axis", TensorProto.INT64, [], [1])),
        node("Constant", [], ["axes"], value=helper.make_tensor("axes", TensorProto.INT64, [1], [1])),
        node("Constant", [], ["zero"], value=helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])),
        # the first maximum
        node("ReduceMax", ["logits"], ["row_max"], axes=[1], keepdims=1),
        node("Equal", ["logits", "row_max"], ["is_max"]),
        node("Cast", ["is_max"], ["is_max_f"], to=TensorProto.FLOAT),
        node("CumSum", ["is_max_f", "axis"], ["maxima_so_far"]),
        node("Equal", ["maxima_so_far", "zero"], ["before_first"]),
        node("Cast", ["before_first"], ["before_first_f"], to=TensorProto.FLOAT),
        node("ReduceSum", ["before_first_f", "axes"], ["first"], keepdims=0),
        node("Cast", ["first"], ["ids"], to=TensorProto.INT64),
        # NaN/Inf anywhere in the row
        node("Sub", ["logits", "logits"], ["zeros"]),
        node("ReduceSum", ["zeros", "axes"], ["row_sum"], keepdims=0),
        node("IsNaN", ["row_sum"], ["nan"]),
        node("Not", ["nan"], ["finite"]),
    ]
    return _model(helper.make_graph(nodes, "argmax_rows", [logits], [ids, finite]))


def write_gather_rows(path: str | Path) -> None:
    onnx.save(gather_rows_graph(), str(path))


def write_argmax_rows(path: str | Path) -> None:
    onnx.save(argmax_rows_graph(), str(path))


def write_all(folder: str | Path = GRAPHS) -> None:
    """Rewrite every shipped helper graph in ``folder`` (the engine's copy by default)."""
    folder = Path(folder)
    write_gather_rows(folder / "gather_rows.onnx")
    write_argmax_rows(folder / "argmax_rows.onnx")


if __name__ == "__main__":  # python -m clipblip.export.kernels: rewrites the engine's copies
    write_all()
