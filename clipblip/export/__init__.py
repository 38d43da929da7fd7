"""Export CLIP/BLIP models to a checked, self-describing ONNX model folder (needs torch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .. import families
from ..errors import ExportError, UsageError
from ..files import check_output, staged_folder
from ..manifest import Manifest
from ..engine.checks import summary
from .checks import build_check, check_entry, stored, write_check
from .convert import check_parity, export_graph, graph_info, move_weights_out
from .openvino import openvino_copy
from .optimize import PRECISIONS, fuse_graph, lower_precision, precision_chain
from .sources import load_source

__all__ = ["export_model", "DEFAULT_OPSET", "PRECISIONS"]

DEFAULT_OPSET = 17


def _library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def export_model(
    model: str,
    out: str | os.PathLike,
    *,
    task: str | None = None,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    attentions: bool = False,
    precision: str = "fp32",
    optimize: bool = True,
    allow_pickle: bool = False,
    progress: Callable[[str], None] | None = None,
    steps: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Export ``model`` (Hub id, save_pretrained directory or ``random:<preset>``) into ``out``.

    ``attentions`` adds every layer's attention weights as extra outputs of the image towers, the
    CLIP text tower and the BLIP decoder step (for visualisation; lean graphs without it).
    ``optimize`` applies ONNX Runtime's transformer fusions where they keep parity. ``precision``
    "int8" (CPU) or "fp16" (CUDA) converts each graph that has an accuracy gate and keeps it only if
    it passes; a graph that fails stays fp32 and the manifest says why. "int4" gives the graphs bound by
    reading their weights (the BLIP decoder step) 4-bit weight-only MatMuls and the others int8; a graph
    whose int4 fails its gate tries int8 next. A decoder step must also pass a teacher-forced decoding gate
    (top-1 agreement and logit cosine against fp32, thresholds in its spec and the manifest). int8 is written
    only in formats that compute the same on every CPU (``optimize.INT8_FORMATS``). Each graph's gate inputs
    and fp32 outputs are stored beside it (``<graph>.checks.npz``), so that the folder checks itself on every
    machine that runs it (:mod:`clipblip.engine.checks`, ``clipblip verify``). Every graph passes the parity gate before the folder appears; on any failure nothing is left.
    ``out`` must be new, or (with ``force``) a model folder that clipblip exported: nothing else is
    ever replaced. ``progress(message)`` reports each stage, ``steps(done, total)`` counts graphs.
    """
    say = progress or (lambda message: None)
    out = check_output(Path(out), force, folder=True)  # before the slow part
    if not 14 <= opset <= 21:
        raise UsageError(f"--opset {opset}: supported opsets are 14 to 21")
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")

    say(f"loading {model}")
    source = load_source(model, task, allow_pickle)
    family = families.family(source.family)
    exporter = families.load_exporter(source.family)  # looked up per call: tests may patch its functions
    sections = exporter.manifest_sections(source)
    specs = exporter.graph_specs(source, attentions)
    needed = families.task_graphs(source.family, sections["tasks"])
    if missing := [name for name in needed if name not in {spec.name for spec in specs}]:
        raise ExportError(f"{source.family} exporter gives no {', '.join(missing)} graph, which the tasks "
                          f"{', '.join(sections['tasks'])} need (see clipblip.families)")

    with staged_folder(out, force) as staging:
        graphs = {}
        for done, spec in enumerate(specs):
            if steps is not None:
                steps(done, len(specs))
            path = staging / spec.filename
            say(f"exporting {spec.name}")
            export_graph(spec, path, opset)
            say(f"checking {spec.name} against PyTorch")
            parity = check_parity(spec, path)
            say(f"{spec.name}: max |ONNX - PyTorch| = {parity['max_abs_diff']:.2e} (tolerance {spec.atol:g})")
            fusion = fuse_graph(spec, path) if optimize else {"applied": False, "reason": "--no-optimize"}
            if fusion["applied"]:
                say(f"{spec.name}: fused {fusion['fused']}, max |ONNX - PyTorch| = "
                    f"{fusion['parity']['max_abs_diff']:.2e}")
            info = graph_info(spec, path, parity)
            info.optimization = fusion
            info.check = check_entry(spec)
            check = build_check(spec, path)  # the gate's inputs and the fp32 graph's outputs, kept in the folder
            lossy_check = stored(check, lossy=True)  # as a lower precision's check is stored, and run everywhere
            openvino = {}
            # lossy folders only: an fp32 folder promises fp32 answers, which bf16 would not keep
            if precision in ("int8", "int4") and spec.gate and spec.name in family.openvino_graphs:
                say(f"{spec.name}: writing and gating its OpenVINO copy")
                openvino = openvino_copy(spec, path, lossy_check, info)  # from the fp32 graph, before it is replaced
                openvino["auto_on"] = list(family.openvino_auto_on)  # the CPU classes where `auto` runs it
                kept = "files" in openvino
                say(f"{spec.name}: OpenVINO copy " + (f"kept, {summary(openvino['accuracy'])}" if kept
                                                      else f"not written: {openvino['reason']}"))
            if precision != "fp32" and spec.gate:
                tries = []
                # int4 only where weights dominate; int8 in formats exact on every CPU, the fastest first
                for target, int8_format in precision_chain(spec, precision):
                    low_path, gate = lower_precision(spec, path, target, lossy_check, info, int8_format or "u8s7")
                    reached = gate.get("reason") or summary(gate)
                    tried = target + (f" ({int8_format})" if int8_format else "")
                    tries.append({"precision_tried": target, **gate})
                    if gate["passed"]:
                        path.unlink()
                        kept_check = info.check
                        info = graph_info(spec, low_path, parity)
                        info.optimization, info.precision, info.check = fusion, target, kept_check
                        say(f"{spec.name}: {tried} kept, {reached}")
                        break
                    low_path.unlink(missing_ok=True)
                    say(f"{spec.name}: {tried} failed its gate ({reached})")
                else:
                    say(f"{spec.name}: keeping fp32")
                # the attempt that decided, and before it any rejected one
                info.accuracy = {**tries[-1], "rejected": tries[:-1]} if len(tries) > 1 else tries[-1]
            if openvino:
                info.backends["openvino"] = openvino
            info.check.update(write_check(check, staging, spec.name, lossy=info.precision != "fp32"))
            info.sha256, info.data = move_weights_out(staging / info.file)
            graphs[spec.name] = info
        if steps is not None:
            steps(len(specs), len(specs))
        source.tokenizer_json().save(str(staging / sections["tokenizer"]["file"]))
        manifest = Manifest(
            family=source.family,
            source={**source.source, "task": source.task, "opset": opset, "attentions": attentions,
                    "precision": precision, "optimize": optimize, "libraries": _library_versions()},
            graphs=graphs,
            **sections,
        )
        manifest.write(staging)
    say(f"wrote {out}")
    return manifest
