"""Export CLIP/BLIP models to a checked, self-describing ONNX model folder (needs torch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .. import families
from ..errors import ExportError, UsageError
from ..files import check_output, staged_folder
from ..manifest import Manifest
from .convert import check_parity, export_graph, graph_info
from .optimize import PRECISIONS, fuse_graph, lower_precision
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
    it passes; a graph that fails stays fp32 and the manifest says why.
    Every graph passes the parity gate before the folder appears; on any failure nothing is left.
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
            if precision != "fp32" and spec.gate:
                low_path, gate = lower_precision(spec, path, precision)
                if gate["passed"]:
                    path.unlink()
                    info = graph_info(spec, low_path, parity)
                    info.optimization, info.precision = fusion, precision
                    say(f"{spec.name}: {precision} kept, least cosine to fp32 {gate['least']}")
                else:
                    low_path.unlink()
                    say(f"{spec.name}: {precision} failed its gate ({gate.get('reason') or gate['least']}); "
                        f"keeping fp32")
                info.accuracy = {"precision_tried": precision, **gate}
            graphs[spec.name] = info
        if steps is not None:
            steps(len(specs), len(specs))
        source.tokenizer.backend_tokenizer.save(str(staging / sections["tokenizer"]["file"]))
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
