"""Export CLIP/BLIP models to a checked, self-describing ONNX model folder (needs torch)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..errors import OutputExistsError, UsageError
from ..manifest import Manifest
from .convert import check_parity, export_graph, graph_info
from .optimize import PRECISIONS, fuse_graph, lower_precision
from .sources import load_source

__all__ = ["export_model", "DEFAULT_OPSET", "PRECISIONS"]

DEFAULT_OPSET = 17


@contextmanager
def staged_folder(out: Path, force: bool) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out``; move it into place only if the block succeeds."""
    out = out.absolute()
    if out.exists() and not force:
        raise OutputExistsError(f"{out}: already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield staging
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


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
) -> Manifest:
    """Export ``model`` (Hub id, save_pretrained directory or ``random:<preset>``) into ``out``.

    ``attentions`` adds every layer's attention weights as extra outputs of the image towers, the
    CLIP text tower and the BLIP decoder step (for visualisation; lean graphs without it).
    ``optimize`` applies ONNX Runtime's transformer fusions where they keep parity. ``precision``
    "int8" (CPU) or "fp16" (CUDA) converts each graph that has an accuracy gate and keeps it only if
    it passes; a graph that fails stays fp32 and the manifest says why.
    Every graph passes the parity gate before the folder appears; on any failure nothing is left.
    """
    from . import blip, clip

    say = progress or (lambda message: None)
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"{out}: already exists; pass --force to replace it")
    if not 14 <= opset <= 21:
        raise UsageError(f"--opset {opset}: supported opsets are 14 to 21")
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")

    say(f"loading {model}")
    source = load_source(model, task, allow_pickle)
    family = {"clip": clip, "blip": blip}[source.family]
    sections = family.manifest_sections(source)

    with staged_folder(out, force) as staging:
        graphs = {}
        for spec in family.graph_specs(source, attentions):
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
