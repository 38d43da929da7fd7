"""After the fp32 parity gate: fuse transformer patterns, and make int8 / int4 / fp16 graphs that pass a gate."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime.quantization
from onnx import numpy_helper
from onnxruntime.quantization import QuantType
from onnxruntime.transformers import optimizer
from onnxruntime.transformers.float16 import convert_float_to_float16

from ..engine.checks import gate_of, run_check
from ..errors import ExportError, ParityError
from ..manifest import GraphInfo
from .convert import Reference, check_parity, session_threads
from .specs import GraphSpec

__all__ = ["PRECISIONS", "WEIGHT_ONLY", "INT8_FORMATS", "fuse_graph", "int8_order", "precision_chain",
           "lower_precision", "fold_weight_transposes", "quantize_weight_only", "write_int8", "accuracy_gate",
           "open_candidate"]

PRECISIONS = ("fp32", "int8", "int4", "fp16", "bf16")
# --precision int4: the graphs whose batch-1 run is bound by reading their weights (GraphSpec.weight_bound, the
# decoder step) get 4-bit weight-only MatMulNBits on every linear layer, the vocabulary projection included;
# compute-bound graphs (towers, cross K/V) get int8 as under --precision int8: they lose with 4 bits (BLIP base
# cross_kv, 577 tokens: 73 ms with int4 against 15 ms with int8).
# Block 32, accuracy level 4 (activations quantised to int8 per block, VNNI/AMX kernels), zero points: BLIP base
# step 13.1 ms against dynamic int8's 14.9 (block 128: 11.9 ms but a larger error), benchmarks/decoder_step.py.
WEIGHT_ONLY = {"int4": {"bits": 4, "block_size": 32, "accuracy_level": 4, "symmetric": False}}
# int8 is written only in formats whose integer products are exact on every CPU kernel ONNX Runtime has, so that
# a gate passed where a folder was exported holds on any CPU (AVX2 and AVX-512 without VNNI multiply u8 x s8 with
# vpmaddubsw, which sums pairs of products in saturating 16 bits: 255 * 127 * 2 = 64770 overflows; with full
# 8-bit signed weights, random:clip-tiny's text tower gave cosine 0.895 there and 0.998 on VNNI). Each graph
# tries the formats in the order measured fastest for it (int8_order) until one passes its gate:
# - u8s7: dynamic quantisation, uint8 activations per tensor x signed weights in [-64, 64] per channel:
#   255 * 64 * 2 = 32640 cannot overflow. The same kernels as 8-bit signed weights, so as fast on every CPU
#   (VNNI/AMX dot products, vpmaddubsw on AVX2); one bit less precise (CLIP base text tower: 0.99857, under
#   its 0.999 gate).
# - u8u8: dynamic quantisation with uint8 weights (a zero point per channel): exact everywhere (16-bit widening
#   on x86), as precise as 8-bit signed; VNNI/AMX CPUs have no u8 x u8 kernel of their own and run the
#   AVX-512 one, slower on graphs of many rows.
# - n8: 8-bit weight-only com.microsoft.MatMulNBits (blocks of 32 along K, a scale and zero point each), its
#   activations quantised per row and block to int8 (accuracy level 4): the most precise, exact in 32-bit
#   sums, and it quantises the tied vocabulary projection too (dynamic quantisation leaves that Gemm fp32).
#   Fused Attention keeps its own packed weights, which MatMulNBits cannot take: such graphs skip it.
# AMD EPYC with AVX-512 VNNI, 2 threads, batch 1, median ms (benchmarks/int8_formats.py, 2026-12-03; the
# decoder step with past 10 and 577 cross tokens, benchmarks/decoder_step.py, 80 interleaved rounds):
#   CLIP base image tower  s8 29.2  u8s7 30.3  u8u8 46.1  (n8: fused attention)
#   CLIP base text tower   s8 7.2   u8s7 9.0 (misses its gate)  u8u8 11.4  n8 12.0
#   BLIP base image tower  s8 299   u8s7 285  u8u8 464  n8 550
#   BLIP base decoder step u8s7 11.7  n8 11.8: the same speed, n8 the more precise (teacher-forced logit
#   cosine 0.9998 against 0.9987)
INT8_FORMATS = {
    "u8s7": {"weight_type": QuantType.QInt8, "reduce_range": True,
             "weights": "int8 per output channel, 7-bit range [-64, 64]",
             "activations": "uint8 per tensor, quantised at run time"},
    "n8": {"weight_only": {"bits": 8, "block_size": 32, "accuracy_level": 4, "symmetric": False},
           "weights": "uint8 in blocks of 32 along K, a float scale and zero point each (MatMulNBits)",
           "activations": "int8 per row and block of 32, quantised at run time"},
    "u8u8": {"weight_type": QuantType.QUInt8, "reduce_range": False,
             "weights": "uint8 per output channel, a zero point each",
             "activations": "uint8 per tensor, quantised at run time"},
}
INT8_EXACT = ("every ONNX Runtime CPU kernel: x86-64 AVX2, AVX-512, AVX-512 VNNI, AVX-VNNI, AMX, and ARM64 "
              "NEON/dot product; no partial sum of integer products can saturate")
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "LayerNormalization", "QuickGelu",
             "Gelu", "FastGelu", "BiasGelu", "EmbedLayerNormalization", "SkipSimplifiedLayerNormalization")


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    """Run the block with ``folder`` as the working directory: onnx reads a weight kept in a data file from
    the location the graph names, relative to the working directory when nothing else is said."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def fuse_graph(spec: GraphSpec, path: Path, reference: Reference) -> dict[str, Any]:
    """Rewrite ``path`` with ONNX Runtime's transformer fusions if the result still passes parity against
    PyTorch's stored answers (``reference``).

    The optimizer works on the graph without its weights, reading from the data file only those it fuses
    (its shape inference copies the whole model several times: BLIP base decoder step 2.4 GB above the
    graph's 0.5 GB with the weights in memory, 16 MB without; the same graph comes out).
    Returns the record for the manifest: the model type, the fused-operator counts and the parity
    of the fused graph; a fusion that breaks parity is dropped and the reason recorded.
    """
    if spec.fusion is None:
        return {"applied": False, "reason": "no fusion pattern for this graph"}
    fused_path = path.with_name(path.stem + ".fused.onnx")
    model = onnx.load(str(path), load_external_data=False)
    # the optimizer's notes on shape inference (logged under top-level module names) and prints are not ours
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _inside(path.parent):
            warnings.simplefilter("ignore")
            model = optimizer.optimize_model(model, opt_level=0, **spec.fusion)
    finally:
        logging.disable(logging.NOTSET)
    counts = Counter(node.op_type for node in model.model.graph.node)
    model.save_model_to_file(str(fused_path))  # new weights inside, the others still in the graph's data file
    del model
    record = {"applied": True, **spec.fusion, "fused": {op: counts[op] for op in FUSED_OPS if counts[op]}}
    try:
        record["parity"] = check_parity(spec, fused_path, reference)
    except ParityError as e:
        fused_path.unlink()
        return {**record, "applied": False, "reason": f"fused graph failed parity: {e}"}
    except Exception as e:  # noqa: BLE001  (a fused graph ONNX Runtime cannot load: its attention outputs fused away)
        fused_path.unlink(missing_ok=True)
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        return {**record, "applied": False, "reason": f"fused graph is not usable: {first[:300]}"}
    os.replace(fused_path, path)
    return record


def open_candidate(path: Path) -> ort.InferenceSession:
    """A lower-precision graph opened for its gate: on CUDA where this ONNX Runtime has it (fp16 kernels are a
    CUDA matter), else on the CPU."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False  # freed when the gate is done; buffers' place never changes a value
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    return ort.InferenceSession(str(path), session_threads(options), providers=providers)


def accuracy_gate(candidate: Any, check: dict[str, np.ndarray], info: GraphInfo, lossy: bool = True) -> dict[str, Any]:
    """The gate of a lower precision or another runtime's copy: the graph's stored check (as the folder will
    hold it) run on ``candidate``, which the engine runs the same way where the folder is used; fp32's max
    difference where the copy is not ``lossy``."""
    provider = candidate.get_providers()[0]  # where it really ran
    try:
        record = run_check(candidate, check, gate_of(info, lossy=lossy), info)
    except Exception as e:  # a kernel missing for this precision on this provider
        return {"passed": False, "reason": f"cannot run the graph on {provider}: {str(e).splitlines()[0]}"}
    return {**record, "provider": provider}


def int8_order(spec: GraphSpec) -> tuple[str, ...]:
    """The int8 formats in the order a graph tries them, fastest first (measured, see INT8_FORMATS): a graph
    bound by reading its weights (the decoder step) runs the weight-only n8 as fast as u8s7 and more precisely;
    others u8s7, then u8u8."""
    return ("n8", "u8s7", "u8u8") if spec.weight_bound else ("u8s7", "u8u8", "n8")


def precision_chain(spec: GraphSpec, precision: str) -> tuple[tuple[str, str | None], ...]:
    """The (precision, int8 format) a graph tries under the export's ``precision``, in order, until one passes
    its gate (else it stays fp32): int4 only where weights dominate (``spec.weight_bound``), then each int8
    format; every int8 format elsewhere."""
    int8 = tuple(("int8", name) for name in int8_order(spec))
    if precision == "int4":
        return ((("int4", None),) if spec.weight_bound else ()) + int8
    if precision == "int8":
        return int8
    return ((precision, None),)


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def fold_weight_transposes(model: onnx.ModelProto, base_dir: str = "") -> dict[str, str]:
    """Give every linear layer a plain [K, N] initializer weight, in place, so that weight-only quantisers see it:
    ``Gemm(A, W, C)`` with a constant W (ONNX Runtime's fusions write the tied vocabulary projection as
    ``Gemm(transB=1)`` against the word embeddings) becomes ``MatMul(A, W')`` [+ ``Add(C)``], and
    ``MatMul(A, Transpose(W))`` becomes ``MatMul(A, W^T)`` with the transpose folded into a new initializer.
    ``base_dir``: the folder of the data file that weights kept outside the graph are read from.
    Returns {MatMul node name: the initializer its weight was made from}."""
    graph = model.graph
    inits = _initializers(graph)
    producers = {o: n for n in graph.node for o in n.output}
    made: dict[str, np.ndarray] = {}
    folded: dict[str, str] = {}
    nodes = []

    def transposed(name: str) -> str:
        if name + "_transposed" not in made:
            made[name + "_transposed"] = np.ascontiguousarray(numpy_helper.to_array(inits[name], base_dir).T)
        return name + "_transposed"

    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type == "Gemm" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2
                and not attrs.get("transA", 0) and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0):
            weight = node.input[1]
            b = transposed(weight) if attrs.get("transB", 0) else weight
            name = node.name or f"gemm_{len(folded)}"
            has_bias = len(node.input) > 2 and node.input[2]
            product = node.output[0] + "_matmul" if has_bias else node.output[0]
            nodes.append(onnx.helper.make_node("MatMul", [node.input[0], b], [product], name=name + "_MatMul"))
            if has_bias:
                nodes.append(onnx.helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                                   name=name + "_Add"))
            folded[name + "_MatMul"] = weight
            continue
        if node.op_type == "MatMul" and node.input[1] in producers:
            source = producers[node.input[1]]
            perm = next((list(a.ints) for a in source.attribute if a.name == "perm"), None)
            if (source.op_type == "Transpose" and source.input[0] in inits and len(inits[source.input[0]].dims) == 2
                    and perm in (None, [1, 0])):
                node.input[1] = transposed(source.input[0])
                folded[node.name] = source.input[0]
        nodes.append(node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.initializer.extend(numpy_helper.from_array(array, name) for name, array in made.items())
    # drop what nothing reads any more (a Transpose now unused, a weight no Gather shares)
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not set(n.output) & used]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    _keep_used_initializers(graph)
    return folded


def _keep_used_initializers(graph: onnx.GraphProto, added: list[onnx.TensorProto] = ()) -> None:
    """Drop the initializers no node reads, then append ``added``."""
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used] + list(added)
    graph.ClearField("initializer")
    graph.initializer.extend(kept)


def _nbits(node: onnx.NodeProto, weight: np.ndarray, bits: int, block_size: int, symmetric: bool,
           accuracy_level: int | None) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """``node`` (MatMul of its input by the constant [K, N] ``weight``) as ``com.microsoft.MatMulNBits``:
    per output column, blocks of ``block_size`` along K, each with a float scale (and a zero point unless
    ``symmetric``), packed as ONNX Runtime's own quantiser packs them (its C++ routines)."""
    from onnxruntime.capi import _pybind_state as kernels  # onnxruntime's packing, as its quantiser uses it

    weight = np.ascontiguousarray(weight, dtype=np.float32)
    rows, cols = weight.shape  # K, N
    per_byte = 8 // bits
    k_blocks = -(-rows // block_size)
    if k_blocks * block_size > rows:
        weight = np.pad(weight, ((0, k_blocks * block_size - rows), (0, 0)))
    packed = np.zeros((cols, k_blocks, block_size // per_byte), dtype=np.uint8)
    zero_points = np.zeros((cols, -(-k_blocks // per_byte)), dtype=np.uint8)
    scales = np.zeros((cols, k_blocks), dtype=np.float32)
    quantize = {4: "quantize_matmul_4bits", 8: "quantize_matmul_8bits"}[bits]
    getattr(kernels, quantize)(packed, weight, scales, zero_points, block_size, cols, rows, symmetric)
    base = node.input[1]
    tensors = [numpy_helper.from_array(packed, f"{base}_q{bits}"), numpy_helper.from_array(scales, f"{base}_scales")]
    if not symmetric:
        tensors.append(numpy_helper.from_array(zero_points, f"{base}_zero_points"))
    attributes = {"K": rows, "N": cols, "bits": bits, "block_size": block_size}
    if accuracy_level:
        attributes["accuracy_level"] = accuracy_level
    quantized = onnx.helper.make_node("MatMulNBits", [node.input[0], *(t.name for t in tensors)], list(node.output),
                                      name=f"{node.name}_q{bits}", domain="com.microsoft", **attributes)
    return quantized, tensors


def _tie_embeddings(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], tied: dict, block_size: int,
                    added: list[onnx.TensorProto]) -> str:
    """Point each Gather of a tied word-embedding matrix at the quantised vocabulary projection's own packed
    weight ([V, blocks, bytes], one word per row) through ``com.microsoft.GatherBlockQuantized``, so that the
    fp32 matrix is no longer stored; edits ``nodes`` and ``added`` in place. Returns what was done."""
    ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in graph.input}
    inits = _initializers(graph)
    done, rewritten = [], []
    for node in nodes:
        source = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if source is None or node.input[0] not in tied or node.input[1] not in ranks or len(source.dims) != 2:
            rewritten.append(node)
            continue
        bits, tensors = tied[node.input[0]]
        packed, scales = tensors[0], numpy_helper.to_array(tensors[1])
        words, blocks = scales.shape
        if blocks * block_size != source.dims[1]:  # padded blocks would add columns to each row
            rewritten.append(node)
            continue
        if len(tensors) > 2:  # zero points, two 4-bit values a byte in MatMulNBits: one a byte here
            zero = numpy_helper.to_array(tensors[2])
            zero = np.stack([zero & 15, zero >> 4], -1).reshape(words, -1)[:, :blocks] if bits == 4 else zero
        else:  # symmetric: MatMulNBits' implied zero point, written out
            zero = np.full((words, blocks), 1 << (bits - 1), dtype=np.uint8)
        base = packed.name
        extra = [numpy_helper.from_array(scales.reshape(words, blocks, 1), f"{base}_gather_scales"),
                 numpy_helper.from_array(zero.astype(np.uint8).reshape(words, blocks, 1), f"{base}_gather_zero_points"),
                 numpy_helper.from_array(np.array([0] * ranks[node.input[1]] + [-1], np.int64), f"{base}_gather_shape")]
        added += extra
        blocked = node.output[0] + "_blocks"
        rewritten += [
            onnx.helper.make_node("GatherBlockQuantized", [base, node.input[1], extra[0].name, extra[1].name],
                                  [blocked], name=f"{node.name}_q{bits}", domain="com.microsoft", bits=bits,
                                  block_size=block_size, gather_axis=0, quantize_axis=2),
            onnx.helper.make_node("Reshape", [blocked, extra[2].name], [node.output[0]], name=f"{node.name}_rows")]
        done.append(bits)
    nodes[:] = rewritten
    if not done:
        return "as in the source"
    return f"{done[0]}-bit: read from the vocabulary projection's packed weight (GatherBlockQuantized)"


def quantize_weight_only(source: Path | onnx.ModelProto, out: Path, *, bits: int = 4, block_size: int = 32,
                         accuracy_level: int | None = 4, symmetric: bool = False, vocab_bits: int | None = None,
                         overrides: dict[str, int] | None = None) -> dict[str, Any]:
    """Write ``source`` with every constant-weight MatMul as ONNX Runtime's weight-only ``MatMulNBits``;
    weight transposes are folded first (:func:`fold_weight_transposes`), so that the tied vocabulary
    projection is quantised too. ``vocab_bits``: other bits for the projection whose weight a Gather shares
    (tied word embeddings), 0 to leave it fp32; ``overrides``: bits per MatMul node name (after folding; 0:
    leave it fp32). Weights kept in a data file beside ``source`` are read one at a time, and those left as they
    are stay there (``out`` names them: it must be written into the same folder). Returns the record for the
    manifest."""
    base_dir = str(Path(source).parent) if isinstance(source, (str, Path)) else ""
    model = onnx.load(str(source), load_external_data=False) if isinstance(source, (str, Path)) else source
    graph = model.graph
    folded = fold_weight_transposes(model, base_dir)
    gathered = {n.input[0] for n in graph.node if n.op_type == "Gather"}
    vocab = {name for name, weight in folded.items() if weight in gathered}
    vocab_bits = bits if vocab_bits is None else vocab_bits
    inits = _initializers(graph)
    nodes, added, counts, tied, done = [], [], Counter(), {}, {}
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        node_bits = (overrides or {}).get(node.name, vocab_bits if node.name in vocab else bits)
        if weight is None or len(weight.dims) != 2 or weight.data_type != onnx.TensorProto.FLOAT or not node_bits:
            nodes.append(node)
            continue
        quantized, tensors = _nbits(node, numpy_helper.to_array(weight, base_dir), node_bits, block_size,
                                    symmetric, accuracy_level)
        if (weight.name, node_bits) in done:  # a weight two MatMuls share is stored once
            tensors = done[weight.name, node_bits]
            quantized.input[1:] = [t.name for t in tensors]
        else:
            done[weight.name, node_bits] = tensors
            added += tensors
        nodes.append(quantized)
        counts[node_bits] += 1
        if node.name in vocab:
            tied[folded[node.name]] = (node_bits, tensors)
    embeddings = _tie_embeddings(graph, nodes, tied, block_size, added)
    graph.ClearField("node")
    graph.node.extend(nodes)
    _keep_used_initializers(graph, added)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(out))
    float_weights = _initializers(graph)
    return {"method": "weight-only com.microsoft.MatMulNBits, round to nearest per block",
            "bits": bits, "block_size": block_size, "accuracy_level": accuracy_level, "symmetric": symmetric,
            "matmul_nbits": {f"{b}-bit": c for b, c in sorted(counts.items())},
            "vocabulary_projection": (f"{vocab_bits}-bit" if vocab_bits else "fp32") if vocab else "not found",
            "word_embeddings": embeddings,
            "float_weight_matmuls_left": sum(1 for n in graph.node if n.op_type in ("MatMul", "Gemm")
                                             and n.input[1] in float_weights)}


def write_int8(fp32_path: Path, out: Path, int8_format: str, formats: dict | None = None) -> dict[str, Any]:
    """``fp32_path`` in the int8 format ``int8_format`` of ``formats`` (default ``INT8_FORMATS``) at ``out``; what
    it holds, for the manifest. A format that cannot take the graph writes nothing and says why (``written``
    False)."""
    chosen = (formats or INT8_FORMATS)[int8_format]
    described = {"format": int8_format, "weights": chosen["weights"], "activations": chosen["activations"],
                 "exact_on": INT8_EXACT}
    nodes = onnx.load(str(fp32_path), load_external_data=False).graph.node
    if "weight_only" in chosen:
        if fused := sorted({n.op_type for n in nodes} & {"Attention", "MultiHeadAttention"}):
            return {**described, "written": False,
                    "reason": f"{int8_format} cannot quantise the weights inside fused {', '.join(fused)}"}
        return {**quantize_weight_only(fp32_path, out, **chosen["weight_only"]), **described}
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser logs advice on the root logger
    # the patch embedding stays fp32: ONNX Runtime's ConvInteger was slower than the fp32 Conv it replaces
    # (AMD EPYC, 2 threads: CLIP ViT-B/32 image tower 26.6 -> 23.2 ms, BLIP base 308 -> 284 ms)
    convolutions = [n.name for n in nodes if n.op_type == "Conv"]
    # fused contrib operators defeat shape inference: tell the quantiser the weights are float
    _quantize_dynamic(fp32_path, out, weight_type=chosen["weight_type"], per_channel=True,
                      reduce_range=chosen["reduce_range"], nodes_to_exclude=convolutions,
                      extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"method": "dynamic (onnxruntime quantize_dynamic)", **described, "kept_fp32": convolutions}


def _quantize_dynamic(fp32_path: Path, out: Path, **options: Any) -> None:
    """onnxruntime.quantization.quantize_dynamic(fp32_path, out, **options) with the graph's weights left in its
    data file: each is read when it is quantised, and those it leaves stay there (``out`` names them; it is
    written beside ``fp32_path``). The same graph comes out. The quantiser's own way loads the whole model and
    copies it twice more for its shape inference (BLIP base's 549 MB question encoder: 2.1 GB above the
    process); here its three loaders run the same shape inference on the graph without its weights."""
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    # modules, not the same-named functions onnxruntime.quantization exports
    quantize, base_quantizer, onnx_quantizer = (importlib.import_module(f"onnxruntime.quantization.{name}")
                                                for name in ("quantize", "base_quantizer", "onnx_quantizer"))

    def load_with_shapes(path: Path) -> onnx.ModelProto:  # quant_utils.load_model_with_shape_infer
        return reload_with_shapes(onnx.load(str(path), load_external_data=False))

    def reload_with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:  # save_and_reload_model_with_shape_infer
        inferred = onnx.shape_inference.infer_shapes(model)  # a new model, as theirs is
        add_infer_metadata(inferred)
        return inferred

    loaders = [(quantize, "load_model_with_shape_infer", load_with_shapes),
               (base_quantizer, "save_and_reload_model_with_shape_infer", reload_with_shapes),
               (onnx_quantizer, "save_and_reload_model_with_shape_infer", reload_with_shapes)]
    if not all(hasattr(module, name) for module, name, _ in loaders):  # another quantiser: its own way
        onnxruntime.quantization.quantize_dynamic(str(fp32_path), str(out), **options)
        return
    originals = [getattr(module, name) for module, name, _ in loaders]
    try:
        for module, name, lean in loaders:
            setattr(module, name, lean)
        with _inside(fp32_path.parent):  # onnx reads a weight from the data file its graph names, relative to here
            onnxruntime.quantization.quantize_dynamic(str(fp32_path), str(out), **options)
    finally:
        for (module, name, _), original in zip(loaders, originals):
            setattr(module, name, original)


def lower_precision(spec: GraphSpec, fp32_path: Path, precision: str, check: dict[str, np.ndarray],
                    info: GraphInfo, int8_format: str = "u8s7") -> tuple[Path, dict[str, Any]]:
    """Write an int8 (dynamic quantisation, ``INT8_FORMATS[int8_format]``), int4 (weight-only MatMulNBits, see
    ``WEIGHT_ONLY``) or fp16 (fp32 inputs/outputs kept) copy of the graph beside it, and gate it on the graph's
    stored ``check``: (path, gate record, which also says what the copy holds under "quantization").
    """
    out = fp32_path.with_name(f"{fp32_path.stem}.{precision}.onnx")
    try:
        if precision == "int8":
            record = write_int8(fp32_path, out, int8_format)
            if not record.get("written", True):
                return out, {"quantization": record, "passed": False, "reason": record["reason"]}
        elif precision in WEIGHT_ONLY:
            record = quantize_weight_only(fp32_path, out, **WEIGHT_ONLY[precision])
        elif precision == "fp16":
            model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
            onnx.save(model, str(out))
            record = {"method": "float16 weights and compute, float32 inputs and outputs"}
        else:
            raise ExportError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    except ExportError:
        raise
    except Exception as e:  # the quantiser and converter raise many types; report one line
        raise ExportError(f"graph '{spec.name}': {precision} conversion failed: {type(e).__name__}: {e}") from e
    try:
        candidate = open_candidate(out)
    except Exception as e:  # ORT's own exception types; the gate fails, the export keeps fp32
        return out, {"quantization": record, "passed": False,
                     "reason": f"cannot open the graph: {str(e).splitlines()[0]}"}
    return out, {"quantization": record, **accuracy_gate(candidate, check, info)}
