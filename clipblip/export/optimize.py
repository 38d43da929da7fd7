"""After the fp32 parity gate: fuse transformer patterns, and make int8 / int4 / fp16 graphs that pass a gate."""

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
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers import optimizer
from onnxruntime.transformers.float16 import convert_float_to_float16

from ..errors import ExportError, ParityError
from .convert import check_parity
from .specs import GraphSpec

__all__ = ["PRECISIONS", "WEIGHT_ONLY", "fuse_graph", "precision_chain", "lower_precision", "fold_weight_transposes",
           "quantize_weight_only", "accuracy_gate", "teacher_forced"]

PRECISIONS = ("fp32", "int8", "int4", "fp16")
# --precision int4: the graphs whose batch-1 run is bound by reading their weights (GraphSpec.weight_bound, the
# decoder step) get 4-bit weight-only MatMulNBits on every linear layer, the vocabulary projection included;
# compute-bound graphs (towers, cross K/V) get int8 as under --precision int8: they lose with 4 bits (BLIP base
# cross_kv, 577 tokens: 73 ms with int4 against 15 ms with int8).
# Block 32, accuracy level 4 (activations quantised to int8 per block, VNNI/AMX kernels), zero points: BLIP base
# step 13.1 ms against dynamic int8's 14.9 (block 128: 11.9 ms but a larger error), benchmarks/decoder_step.py.
WEIGHT_ONLY = {"int4": {"bits": 4, "block_size": 32, "accuracy_level": 4, "symmetric": False}}
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


def _centred_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, the cosine of ``a`` and ``b`` after subtracting each row's mean (a constant offset changes no
    softmax); a row that is constant on one side only scores 0 (a dead candidate must not pass)."""
    a = a.astype(np.float64) - a.mean(axis=-1, keepdims=True)
    b = b.astype(np.float64) - b.mean(axis=-1, keepdims=True)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    both_flat = (np.linalg.norm(a, axis=-1) == 0) & (np.linalg.norm(b, axis=-1) == 0)
    return np.where(both_flat, 1.0, (a * b).sum(-1) / np.maximum(norms, 1e-300))


def teacher_forced(spec: GraphSpec, reference: ort.InferenceSession, candidate: ort.InferenceSession) -> dict[str, Any]:
    """``spec.teacher``'s gate: the reference step decodes greedily, the candidate is fed the same tokens.

    Per step each side keeps its own KV cache (present → past); only the new token goes in, so nothing but the
    caches grows with the sequence. A (step, row) where the candidate's top-1 differs from fp32's counts against
    it unless fp32 itself rates the two within ``near_tie`` nats (a near-tie, fp32's own coin flip: random
    weights make many). Returns the record for the manifest; a NaN/Inf in the candidate's logits fails it."""
    teacher = spec.teacher
    cross = {k: v.detach().cpu().numpy().astype(np.float32)
             for k, v in teacher.cross(torch.Generator().manual_seed(3)).items()}
    rows = next(iter(cross.values())).shape[0]
    past_names = [t.name for t in spec.inputs if t.name.startswith("past_")]
    present_names = [t.name for t in spec.outputs if t.name.startswith("present_")]
    empty = {t.name: np.zeros(t.shape_for({"batch": rows, "past_sequence": 0}), np.float32)
             for t in spec.inputs if t.name in past_names}
    caches = [dict(empty), dict(empty)]
    tokens = np.full((rows, 1), teacher.bos_id, dtype=np.int64)
    same_total, excused, decisive, cosines, finite = 0, 0, 0, [], True
    for _ in range(teacher.steps):
        logits = []
        for side, session in enumerate((reference, candidate)):
            out = session.run([teacher.logits, *present_names], {"input_ids": tokens, **caches[side], **cross})
            logits.append(out[0].astype(np.float64))
            caches[side] = dict(zip(past_names, out[1:]))
        want, got = logits
        if not np.all(np.isfinite(got)):
            finite = False
            break
        picked, chosen = want.argmax(-1), got.argmax(-1)
        same = picked == chosen
        gap = want[np.arange(rows), picked] - want[np.arange(rows), chosen]  # fp32's preference, nats
        runner_up = np.sort(want, axis=-1)[:, -2]
        decisive += int((want[np.arange(rows), picked] - runner_up > teacher.near_tie).sum())
        same_total += int(same.sum())
        excused += int((~same & (gap <= teacher.near_tie)).sum())
        cosines.append(_centred_cosines(want, got))
        tokens = picked[:, None].astype(np.int64)  # fp32's greedy choice, fed to both
    decisions = rows * teacher.steps
    record = {"metric": "teacher-forced greedy decode from bos: share of steps x rows where the candidate picks "
                        "fp32's top-1 token (or one fp32 rates within near_tie nats of it), and the least cosine "
                        "of the logits centred per row",
              "steps": teacher.steps, "rows": rows, "bos_id": teacher.bos_id, "near_tie": teacher.near_tie,
              "threshold": {"top1_agreement": teacher.min_top1, "least_cosine": teacher.min_cosine},
              "finite": finite}
    if not finite:
        return {**record, "top1_agreement": None, "least_cosine": None, "passed": False,
                "reason": "NaN/Inf in the candidate's logits"}
    least = float(np.min(cosines))
    rate = (same_total + excused) / decisions
    record.update(top1_agreement=rate, exact_top1_agreement=same_total / decisions, near_tie_flips=excused,
                  decisive_steps=decisive,  # (step, row) where fp32's top-1 leads by more than near_tie
                  least_cosine=least, cosine_per_step=[round(float(c.min()), 6) for c in cosines],
                  passed=bool(rate >= teacher.min_top1 and least >= teacher.min_cosine))
    return record


def accuracy_gate(spec: GraphSpec, reference: Path, candidate: Path) -> dict[str, Any]:
    """Run both graphs on the check inputs; per gated output the least cosine to fp32, and NaN/Inf.
    A decoder step (``spec.teacher``) must also pass the teacher-forced decoding gate."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # fp16 kernels are a CUDA matter: gate on CUDA where this ONNX Runtime has it
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        sessions = [ort.InferenceSession(str(p), options, providers=providers) for p in (reference, candidate)]
    except Exception as e:  # ORT's own exception types; the gate fails, the export keeps fp32
        return {"passed": False, "reason": f"cannot run the graph on {providers[0]}: {str(e).splitlines()[0]}"}
    return compare_sessions(spec, *sessions)


def compare_sessions(spec: GraphSpec, reference: Any, candidate: Any) -> dict[str, Any]:
    """The gate on two open graphs (anything with ``run(names, feeds)`` and ``get_providers()``): the fp32
    ``reference`` and a ``candidate`` of lower precision or on another runtime."""
    provider = candidate.get_providers()[0]  # where it really ran
    names = [t.name for t in spec.outputs]
    least = {name: 1.0 for name in spec.gate}
    finite = True
    generator = torch.Generator().manual_seed(2)
    try:
        for sizes in spec.check_sizes:
            feeds = {k: v.numpy() for k, v in spec.sample(sizes, generator).items()}
            want, got = (dict(zip(names, s.run(names, feeds))) for s in (reference, candidate))
            finite &= all(np.all(np.isfinite(v)) for v in got.values())
            for name in spec.gate:
                least[name] = min(least[name], float(_cosines(want[name], got[name]).min()))
        teacher = teacher_forced(spec, reference, candidate) if spec.teacher is not None else None
    except Exception as e:  # a kernel missing for this precision on this provider
        return {"passed": False, "reason": f"cannot run the graph on {provider}: {str(e).splitlines()[0]}"}
    passed = finite and all(least[name] >= threshold for name, threshold in spec.gate.items())
    record = {"metric": "cosine to fp32, least over rows and check sizes", "least": least,
              "threshold": dict(spec.gate), "finite": bool(finite), "passed": bool(passed), "provider": provider}
    if teacher is not None:
        record["teacher_forced"] = teacher
        record["passed"] = bool(passed and teacher["passed"])
    return record


def precision_chain(spec: GraphSpec, precision: str) -> tuple[str, ...]:
    """The precisions a graph tries under the export's ``precision``, in order, until one passes its gate (else
    it stays fp32): int4 only where weights dominate (``spec.weight_bound``), then int8; int8 elsewhere."""
    if precision == "int4":
        return ("int4", "int8") if spec.weight_bound else ("int8",)
    return (precision,)


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def fold_weight_transposes(model: onnx.ModelProto) -> dict[str, str]:
    """Give every linear layer a plain [K, N] initializer weight, in place, so that weight-only quantisers see it:
    ``Gemm(A, W, C)`` with a constant W (ONNX Runtime's fusions write the tied vocabulary projection as
    ``Gemm(transB=1)`` against the word embeddings) becomes ``MatMul(A, W')`` [+ ``Add(C)``], and
    ``MatMul(A, Transpose(W))`` becomes ``MatMul(A, W^T)`` with the transpose folded into a new initializer.
    Returns {MatMul node name: the initializer its weight was made from}."""
    graph = model.graph
    inits = _initializers(graph)
    producers = {o: n for n in graph.node for o in n.output}
    made: dict[str, np.ndarray] = {}
    folded: dict[str, str] = {}
    nodes = []

    def transposed(name: str) -> str:
        if name + "_transposed" not in made:
            made[name + "_transposed"] = np.ascontiguousarray(numpy_helper.to_array(inits[name]).T)
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
    leave it fp32). Returns the record for the manifest."""
    model = onnx.load(str(source)) if isinstance(source, (str, Path)) else source
    graph = model.graph
    folded = fold_weight_transposes(model)
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
        quantized, tensors = _nbits(node, numpy_helper.to_array(weight), node_bits, block_size, symmetric,
                                    accuracy_level)
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


def lower_precision(spec: GraphSpec, fp32_path: Path, precision: str) -> tuple[Path, dict[str, Any]]:
    """Write an int8 (dynamic quantisation, per-channel weights), int4 (weight-only MatMulNBits, see
    ``WEIGHT_ONLY``) or fp16 (fp32 inputs/outputs kept) copy of the graph beside it, and gate it against the
    fp32 graph: (path, gate record, which also says what the copy holds under "quantization").
    """
    out = fp32_path.with_name(f"{fp32_path.stem}.{precision}.onnx")
    try:
        if precision == "int8":
            logging.getLogger().setLevel(logging.ERROR)  # the quantiser logs advice on the root logger
            # fused contrib operators defeat shape inference: tell the quantiser the weights are float
            quantize_dynamic(str(fp32_path), str(out), weight_type=QuantType.QInt8, per_channel=True,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            record = {"method": "dynamic (onnxruntime quantize_dynamic)", "weights": "int8 per output channel",
                      "activations": "uint8 per tensor, quantised at run time"}
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
    return out, {"quantization": record, **accuracy_gate(spec, fp32_path, out)}
