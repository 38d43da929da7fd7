"""Trace a GraphSpec to ONNX, check it against PyTorch's stored answers (names, then shapes, then values), and
store a graph with its weights in a data file beside it.

After tracing, every step works on graphs whose weights stay in their data file: the graph itself is a few
hundred kB in memory, and a weight is read when a step needs its values (:func:`store_graph`).
"""

from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data

from ..errors import ExportError, ParityError
from ..manifest import GraphInfo, TensorInfo, sha256_of
from .specs import Axes, GraphSpec

__all__ = ["export_graph", "Reference", "check_parity", "open_session", "session_threads", "threads_used",
           "store_graph", "graph_io", "graph_info"]

ONNX_DTYPES = {1: "float32", 7: "int64", 6: "int32", 10: "float16", 9: "bool"}
SIZE_THRESHOLD = 1024  # onnx.save_model's: smaller tensors stay inside the graph file
DIFF_CHUNK = 1 << 22  # elements compared at a time (float64 copies of a 4M slice: 64 MB)
MAPPED_BYTES = 1 << 20  # stored answers larger than this are read through a memory map
_threads = 0  # ONNX Runtime's intra-op threads in the export's sessions (0: its default, one per core)


@contextmanager
def threads_used(count: int | None) -> Iterator[None]:
    """Within the block, the export's PyTorch and ONNX Runtime runs use ``count`` threads (None: their
    defaults, one per core); the previous settings come back after."""
    global _threads
    if count is None:
        yield
        return
    before = torch.get_num_threads(), _threads
    torch.set_num_threads(count)
    _threads = count
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        _threads = before[1]


def session_threads(options: ort.SessionOptions) -> ort.SessionOptions:
    """``options`` with the intra-op threads that :func:`threads_used` set, if any."""
    if _threads:
        options.intra_op_num_threads = _threads
    return options


def export_graph(spec: GraphSpec, path: Path, opset: int) -> None:
    """Trace ``spec.module`` at ``spec.trace_sizes`` and write the graph to ``path`` with its weights in
    ``<path>.data`` beside it (the file :func:`store_graph` writes).

    torch.onnx serialises a graph and its weights as one protobuf message, holding about four copies of the
    weights at once (BLIP base text encoder, 549 MB: 2.2 GB above the process). Here it serialises the graph
    alone, and the weights it would have put in (those after its constant folding, kept on the way) are written
    a tensor at a time: the same graph byte for byte (tests/export/test_clip_export.py). A torch.onnx that does
    not hand them over gets the whole message written, then stored.
    """
    weights: dict[str, Any] = {}
    with _weights_kept(weights) as kept:
        _trace(spec, path, opset, export_params=not kept)
    if kept and _attach_weights(spec, path, weights):
        return
    if kept:  # some weight was not handed over: serialise them all after all
        _trace(spec, path, opset, export_params=True)
    store_graph(path, path)


def _trace(spec: GraphSpec, path: Path, opset: int, export_params: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    sample = spec.sample(spec.trace_sizes, generator)
    args = tuple(sample[t.name] for t in spec.inputs)
    dynamic_axes = {t.name: t.dynamic_axes() for t in spec.inputs + spec.outputs if t.dynamic_axes()}
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                spec.module,
                args,
                str(path),
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
                export_params=export_params,
            )
    except Exception as e:  # torch raises many types here; report one line
        raise ExportError(f"graph '{spec.name}': tracing to ONNX failed: {type(e).__name__}: {e}") from e


@contextmanager
def _weights_kept(found: dict[str, Any]) -> Iterator[bool]:
    """While the block runs, keep in ``found`` the weights that torch.onnx's TorchScript exporter gives its
    serialiser (name → tensor, after constant folding); yields whether this torch.onnx lets them be kept."""
    try:
        from torch.onnx._internal.torchscript_exporter import utils
        model_to_graph = utils._model_to_graph
    except (ImportError, AttributeError):
        yield False
        return

    def keeping(*args: Any, **kwargs: Any) -> Any:
        result = model_to_graph(*args, **kwargs)  # (graph, weights by name, PyTorch's outputs)
        if isinstance(result, tuple) and len(result) == 3 and isinstance(result[1], dict):
            found.update(result[1])
        return result

    utils._model_to_graph = keeping
    try:
        yield True
    finally:
        utils._model_to_graph = model_to_graph


def _attach_weights(spec: GraphSpec, path: Path, weights: dict[str, Any]) -> bool:
    """Give the graph at ``path``, serialised without its weights (they are inputs there), its weights as
    initializers in the order of those inputs, as torch.onnx writes them, in ``<path>.data``. False (and
    nothing written) if a weight input has no kept weight."""
    model = onnx.load(str(path))
    inputs = {t.name for t in spec.inputs}
    named = [i.name for i in model.graph.input if i.name not in inputs]
    if any(name not in weights for name in named):
        return False
    kept = [i for i in model.graph.input if i.name in inputs]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    data = path.with_name(path.name + ".data")
    with open(data, "wb") as out:
        for name in named:
            tensor = numpy_helper.from_array(weights[name].detach().contiguous().cpu().numpy(), name)
            raw = tensor.raw_data
            if sys.getsizeof(raw) >= SIZE_THRESHOLD:
                _move_out(tensor, raw, out, data.name)
            model.graph.initializer.append(tensor)
            del tensor, raw
        written = out.tell() > 0
    if not written:
        data.unlink()
    onnx.save_model(model, str(path))
    return True


@dataclass(frozen=True)
class Reference:
    """PyTorch's answers for a graph's parity check, kept on disk (with attention weights they reach hundreds of
    MB): per checked size ``sizes[k]``, the inputs fed (``case<k>.in<i>.npy``, in the order of ``inputs``) and
    PyTorch's outputs (``case<k>.out<j>.npy``). Made by :func:`clipblip.export.trace.torch_reference`."""

    folder: Path
    sizes: tuple[Axes, ...]
    inputs: tuple[str, ...]
    outputs: int

    def cases(self) -> Iterator[tuple[Axes, dict[str, np.ndarray], Iterator[np.ndarray]]]:
        """(sizes, feeds, PyTorch's outputs) per checked size; the outputs are read one at a time as they are
        iterated (large ones memory-mapped), so that only the one being compared is resident."""
        for k, sizes in enumerate(self.sizes):
            feeds = {name: np.load(self.folder / f"case{k}.in{i}.npy") for i, name in enumerate(self.inputs)}
            yield sizes, feeds, _answers(self.folder, k, self.outputs)


def _answers(folder: Path, case: int, count: int) -> Iterator[np.ndarray]:
    for j in range(count):
        path = folder / f"case{case}.out{j}.npy"
        yield np.load(path, mmap_mode="r" if path.stat().st_size > MAPPED_BYTES else None)


def open_session(path: Path) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for a check at export; without the memory arena, so that what one run
    needed is freed before the next step (it only decides where buffers live, never a value)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), session_threads(options), providers=["CPUExecutionProvider"])


def _max_abs_diff(value: np.ndarray, reference: np.ndarray) -> float:
    """max |value - reference| in float64, a slice at a time (the same number as in one go, less memory)."""
    a, b = value.reshape(-1), reference.reshape(-1)
    worst = 0.0
    for start in range(0, a.size, DIFF_CHUNK):
        piece = a[start:start + DIFF_CHUNK].astype(np.float64) - b[start:start + DIFF_CHUNK].astype(np.float64)
        worst = max(worst, float(np.max(np.abs(piece))))
    return worst


def check_parity(spec: GraphSpec, path: Path, reference: Reference) -> dict[str, Any]:
    """Compare the ONNX graph at ``path`` with PyTorch's stored answers; raise ParityError on any mismatch.

    Returns the parity record for the manifest: worst absolute difference, tolerance, checked sizes.
    """
    session = open_session(path)
    expected_in = [t.name for t in spec.inputs]
    expected_out = [t.name for t in spec.outputs]
    found_in = [i.name for i in session.get_inputs()]
    found_out = [o.name for o in session.get_outputs()]
    if found_in != expected_in or found_out != expected_out:
        raise ParityError(
            f"graph '{spec.name}': names differ: expected inputs {expected_in} outputs {expected_out}, "
            f"found inputs {found_in} outputs {found_out}"
        )

    worst: dict[str, float] = {name: 0.0 for name in expected_out}
    for sizes, feeds, answers in reference.cases():
        got = session.run(expected_out, feeds)
        for out_spec, ref, value in zip(spec.outputs, answers, got):  # the previous ref is unmapped
            if value.shape != ref.shape:
                raise ParityError(
                    f"graph '{spec.name}': output '{out_spec.name}' has shape {value.shape}, "
                    f"PyTorch gives {ref.shape} (at {sizes})"
                )
            if not np.all(np.isfinite(value)):
                raise ParityError(f"graph '{spec.name}': output '{out_spec.name}' has NaN/Inf (at {sizes})")
            diff = _max_abs_diff(value, ref) if ref.size else 0.0
            if diff > spec.atol:
                raise ParityError(
                    f"graph '{spec.name}': output '{out_spec.name}' differs from PyTorch by {diff:.3g} "
                    f"(tolerance {spec.atol:g}) at {sizes}"
                )
            worst[out_spec.name] = max(worst[out_spec.name], diff)
        del got, answers
    return {
        "max_abs_diff": max(worst.values()),
        "max_abs_diff_per_output": worst,
        "atol": spec.atol,
        "checked_sizes": list(spec.check_sizes),
        "traced_sizes": spec.trace_sizes,
    }


def _initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """The graph's initializers, then those of its subgraphs (onnx.save_model's order)."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _initializers(attribute.g)
            for subgraph in attribute.graphs:
                yield from _initializers(subgraph)


def _external_bytes(tensor: onnx.TensorProto, folder: Path) -> bytes:
    """The bytes of a tensor held in a data file that an export step wrote beside its graph."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    with open(folder / Path(info["location"]).name, "rb") as f:
        f.seek(int(info.get("offset", 0)))
        return f.read(int(info["length"])) if "length" in info else f.read()


def _move_out(tensor: onnx.TensorProto, raw: bytes, out: Any, location: str) -> None:
    """Append ``raw``, the tensor's bytes, to the data file ``out`` and point the tensor at them."""
    offset = out.tell()
    out.write(raw)
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", len(raw))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)


def store_graph(source: Path, target: Path) -> tuple[str, dict[str, str]]:
    """Write the graph at ``source`` (weights inside it, in its own data files, or both) to ``target`` with its
    weights in ``<target>.data`` beside it, a tensor at a time: the file onnx.save_model(save_as_external_data)
    writes, without the whole model in memory. Returns the manifest's ``sha256`` of the graph file and its
    ``data`` (file → sha256). ONNX Runtime maps such weights from disk instead of copying them out of the
    parsed graph: on BLIP base int8, peak memory to the first caption 509 → 409 MB and the load a third
    faster."""
    model = onnx.load(str(source), load_external_data=False)  # weights inside a file come along (a parse)
    data = target.with_name(target.name + ".data")
    with open(data, "wb") as out:  # a new file: the user's umask applies; removed below if nothing goes out
        for tensor in _initializers(model.graph):
            if uses_external_data(tensor):
                raw = _external_bytes(tensor, source.parent)
            elif tensor.HasField("raw_data"):
                raw = tensor.raw_data
                if sys.getsizeof(raw) < SIZE_THRESHOLD:
                    continue
            else:
                continue
            _move_out(tensor, raw, out, data.name)
            del raw
        written = out.tell() > 0
    if not written:
        data.unlink()
    onnx.save_model(model, str(target))
    return sha256_of(target), {data.name: sha256_of(data)} if written else {}


def graph_io(spec: GraphSpec, path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The graph's inputs and outputs as the manifest lists them, their types read back from the file."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def tensors(values, specs) -> list[TensorInfo]:
        by_name = {v.name: v for v in values}
        result = []
        for s in specs:
            elem = by_name[s.name].type.tensor_type.elem_type
            result.append(TensorInfo(name=s.name, dtype=ONNX_DTYPES.get(elem, str(elem)), shape=list(s.axes)))
        return result

    return tensors(graph.input, spec.inputs), tensors(graph.output, spec.outputs)


def graph_info(spec: GraphSpec, path: Path, parity: dict[str, Any]) -> GraphInfo:
    """A manifest entry for the graph at ``path`` with its inputs and outputs (sha256 and data left empty)."""
    inputs, outputs = graph_io(spec, path)
    return GraphInfo(file=path.name, sha256="", inputs=inputs, outputs=outputs, precision="fp32", parity=parity)
