"""Export CLIP/BLIP models to a checked, self-describing ONNX model folder (needs torch).

An export is a few named steps, each returning its record for the manifest: every graph is traced and run in
PyTorch first (:mod:`.trace`); the model is then let go and each graph, on its own, is checked against
PyTorch's answers, fused, given its stored check, an OpenVINO copy and a lower precision where asked, and
stored. Each graph's :class:`GraphInfo` is made once, from those records.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import torchvision_cpu

torchvision_cpu.install()  # before anything imports torchvision (transformers' image processors, open_clip, timm)

from .. import families  # noqa: E402
from ..engine.checks import summary
from ..engine.session import has_copy
from ..errors import ExportError, UsageError
from ..files import check_output, staged_folder
from ..manifest import GraphInfo, Manifest
from .calibration import Calibration
from .checks import build_check, check_entry, stored, write_check
from .convert import check_parity, graph_io, store_graph, threads_used
from .meter import LARGE_WEIGHTS, Meter
from .openvino import openvino_copy
from .optimize import PRECISIONS, fuse_graph, lower_precision, precision_chain
from .sources import check_needs, load_source, source_family
from .specs import GraphSpec
from .trace import Traced, trace_graphs

__all__ = ["export_model", "DEFAULT_OPSET", "PRECISIONS"]

DEFAULT_OPSET = 17
WORK = ".work"  # inside the staging folder: traced graphs, PyTorch's answers, candidates; removed before the end

Say = Callable[[str], Any]


def _library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    for name in ("open_clip", "timm", "ftfy"):  # an OpenCLIP export's too: they built the model and its checks
        if name in sys.modules:
            versions[name] = getattr(sys.modules[name], "__version__", "unknown")
    return versions


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
    threads: int | None = None,
    towers: str = families.BOTH,
    calibration: str | os.PathLike | None = None,
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
    machine that runs it (:mod:`clipblip.engine.checks`, ``clipblip verify``). Every graph passes the parity
    gate before the folder appears; on any failure nothing is left. The manifest's ``export`` section records
    the seconds and peak resident memory of the export and of each step.
    ``out`` must be new, or (with ``force``) a model folder that clipblip exported: nothing else is
    ever replaced. ``progress(message)`` reports each stage, ``steps(done, total)`` counts the graphs'
    steps (each graph is traced, then finished). ``threads``: the CPU threads of the export's PyTorch and ONNX
    Runtime runs (default: one per core); the graphs written are the same. ``towers`` "image" or "text" writes a
    dual encoder's one tower alone (its manifest's ``model.towers`` says which, and its ``tasks`` are those one
    tower does: embed); a family whose tasks need both sides together (BLIP) is refused before anything loads.
    The manifest's ``source.fingerprint`` identifies the checkpoint (:func:`checkpoint_fingerprint`).
    "bf16" keeps every ONNX graph fp32 and writes the graphs OpenVINO runs in bf16 (the family's
    ``openvino_graphs``) as OpenVINO copies, gated like fp16; where the CPU computes no bf16, the fp32 graphs run.
    Where the family has OpenVINO copies for ``precision`` (``Family.openvino_copies``) and OpenVINO is installed,
    each such graph gets one; int8 copies (only with ``calibration``, a folder of images and ``.txt`` texts) are
    quantised by NNCF with activation ranges calibrated on three in four of them and gated on the fourth too.
    """
    say = progress or (lambda message: None)
    out = check_output(Path(out), force, folder=True)  # before the slow part
    if not 14 <= opset <= 21:
        raise UsageError(f"--opset {opset}: supported opsets are 14 to 21")
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads}: must be at least 1")
    check_towers(model, towers)
    check_needs(model)
    if calibration is not None:
        if precision != "int8":
            raise UsageError(f"--calibration: only int8 exports are calibrated, not --precision {precision}")
        family = source_family(model)
        copy = family.openvino_copies.get("int8")
        if copy is None or copy.weights != "int8":
            raise UsageError(f"--calibration: {family.title} folders have no calibrated int8 copy "
                             f"(docs/speed.md, OpenVINO copies); leave it out")
    calibrate = Calibration(calibration)  # a folder of no images and no texts is refused before the slow part

    with Meter() as meter, threads_used(threads):
        with meter.step("load"):
            say(f"loading {model}")
            source = load_source(model, task, allow_pickle)
            exporter = families.load_exporter(source.family)  # looked up per call: tests may patch its functions
            sections = held_towers(source.family, exporter.manifest_sections(source), towers)
            specs = _graph_specs(exporter, source, sections, attentions)
            fingerprint = checkpoint_fingerprint(source, sections)
        count = (lambda done: steps(done, 2 * len(specs))) if steps is not None else (lambda done: None)
        with staged_folder(out, force) as staging:
            count(0)
            traced = trace_graphs(source.model, specs, staging / WORK, opset, meter, say, count)
            source.tokenizer_json().save(str(staging / sections["tokenizer"]["file"]))
            family = families.family(source.family)
            graphs = {}
            copies = OpenVinoCopies(family, precision, calibrate, sections, staging)
            for done, spec in enumerate(specs):
                count(len(specs) + done)
                graphs[spec.name] = finish_graph(spec, traced[spec.name], staging, family, precision, optimize,
                                                 meter, say, copies)
                shutil.rmtree(traced[spec.name].graph.parent)
            count(2 * len(specs))
            shutil.rmtree(staging / WORK)
            manifest = Manifest(
                family=source.family,
                source={**source.source, "fingerprint": fingerprint, "task": source.task, "opset": opset,
                        "attentions": attentions, "precision": precision, "optimize": optimize,
                        "libraries": _library_versions()},
                graphs=graphs,
                **sections,
                export=meter.record(),
            )
            manifest.write(staging)
    say(f"wrote {out}")
    return manifest


def check_towers(model: str, towers: str) -> None:
    """UsageError, before anything loads, for a ``towers`` that is no choice or that the family of ``model`` cannot
    export alone."""
    if towers not in (*families.TOWERS, families.BOTH):
        raise UsageError(f"--towers {towers}: choose {', '.join(families.TOWERS)} or {families.BOTH}")
    if towers == families.BOTH:
        return
    family = source_family(model)
    if not family.towers:
        raise UsageError(f"--towers {towers}: {model} is a {family.title} model, whose tasks "
                         f"({', '.join(t.name for t in family.tasks)}) need the image and text sides together; "
                         f"it is exported whole: leave out --towers")


def held_towers(family_name: str, sections: dict[str, Any], towers: str) -> dict[str, Any]:
    """The manifest sections of an export holding ``towers``: ``model.towers`` names them (a dual encoder's), and
    ``tasks`` keeps what they do."""
    family = families.family(family_name)
    if not family.towers:
        return sections
    held = list(family.towers) if towers == families.BOTH else [towers]
    return {**sections, "tasks": families.tower_tasks(family_name, sections["tasks"], held),
            "model": {**sections["model"], "towers": held}}


def _graph_specs(exporter: Any, source: Any, sections: dict[str, Any], attentions: bool) -> list[GraphSpec]:
    """The family's graphs for the source, less those of towers not held; ExportError if one that its tasks need
    is missing."""
    held = sections["model"].get("towers")
    left_out = {graph for tower, graph in families.family(source.family).towers.items()
                if held is not None and tower not in held}
    specs = [spec for spec in exporter.graph_specs(source, attentions) if spec.name not in left_out]
    needed = families.task_graphs(source.family, sections["tasks"], held)
    if missing := [name for name in needed if name not in {spec.name for spec in specs}]:
        raise ExportError(f"{source.family} exporter gives no {', '.join(missing)} graph, which the tasks "
                          f"{', '.join(sections['tasks'])} need (see clipblip.families)")
    return specs


def checkpoint_fingerprint(source: Any, sections: dict[str, Any]) -> str:
    """sha256 of what the model's graphs compute from: every weight of the checkpoint (names, types, shapes,
    bytes), its image preprocessing and its tokenizer. Exports of one checkpoint share it whatever their towers,
    precision or options, so that a search database built with one may be queried with another."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in source.model.state_dict().items():
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    digest.update(json.dumps([sections["image"], sections["tokenizer"]], sort_keys=True).encode())
    digest.update(source.tokenizer_json().to_str().encode())
    return digest.hexdigest()


def finish_graph(spec: GraphSpec, traced: Traced, staging: Path, family: families.Family, precision: str,
                 optimize: bool, meter: Meter, say: Say, copies: OpenVinoCopies | None = None) -> GraphInfo:
    """A traced graph through its ONNX steps into ``staging``: parity, fusion, its stored check, an OpenVINO copy
    and a lower precision where asked; returns its manifest entry, made from the steps' records."""
    name, fp32 = spec.name, traced.graph  # its weights in a data file: each step reads those it needs
    weights = fp32.with_name(fp32.name + ".data")
    # ONNX Runtime's optimizer and quantizer leave their objects in reference cycles: collected after them when
    # they held much (a full collection takes 0.2 s)
    large = weights.is_file() and weights.stat().st_size >= LARGE_WEIGHTS
    copy = copies.copy_of(spec) if copies is not None else None
    unfused = fp32.with_name(fp32.stem + ".unfused.onnx")  # NNCF quantises the traced graph: it reads no fused ops
    if copy is not None and copy.weights == "int8" and copies.calibration.folder is not None:
        shutil.copyfile(fp32, unfused)  # the graph alone; its weights stay in the data file both name
    with meter.step(f"{name}/fusion", collect=large):
        fusion = fuse_graph(spec, fp32, traced.reference) if optimize else {"applied": False, "reason": "--no-optimize"}
    if fusion["applied"]:
        say(f"{name}: fused {fusion['fused']}")
    # parity of the graph that is kept: the fused one passed it in fuse_graph (checking the traced graph too cost
    # a tenth of an export); without fusion, or where the fused graph failed, the traced one is checked now
    with meter.step(f"{name}/parity"):
        if not fusion["applied"]:
            say(f"checking {name} against PyTorch")
        parity = fusion["parity"] if fusion["applied"] else check_parity(spec, fp32, traced.reference)
    say(f"{name}: max |ONNX - PyTorch| = {parity['max_abs_diff']:.2e} (tolerance {spec.atol:g})")
    inputs, outputs = graph_io(spec, fp32)
    entry = check_entry(spec)
    gated = GraphInfo(file=fp32.name, sha256="", inputs=inputs, outputs=outputs, check=entry)  # what gates read
    with meter.step(f"{name}/check"):
        check = build_check(spec, fp32, traced.cross)  # the gate's inputs and the fp32 graph's outputs
    lossy_check = stored(check, lossy=True)  # as a lower precision's check is stored, and run everywhere
    backends = {}
    if copy is not None:
        with meter.step(f"{name}/openvino"):
            backends["openvino"] = openvino_step(spec, fp32, unfused, check, gated, staging, copies, say)
    with meter.step(f"{name}/precision", collect=large and precision != "fp32"):
        kept, kept_precision, accuracy = lower_step(spec, fp32, precision, lossy_check, gated, say)
    with meter.step(f"{name}/store"):
        final = staging / (spec.filename if kept == fp32 else kept.name)
        sha256, data = store_graph(kept, final)
        check_file = write_check(check, staging, name, lossy=kept_precision != "fp32")
        inputs, outputs = graph_io(spec, final)
    return GraphInfo(file=final.name, sha256=sha256, inputs=inputs, outputs=outputs, precision=kept_precision,
                     parity=parity, optimization=fusion, accuracy=accuracy, backends=backends, data=data,
                     check={**entry, **check_file})


class OpenVinoCopies:
    """Which graphs of an export get an OpenVINO copy, of what kind, and their calibration inputs."""

    def __init__(self, family: families.Family, precision: str, calibration: Calibration, sections: dict[str, Any],
                 staging: Path):
        self.family, self.precision, self.calibration = family, precision, calibration
        self.sections, self.staging = sections, staging

    def copy_of(self, spec: GraphSpec) -> families.OpenVinoCopy | None:
        copy = self.family.openvino_copies.get(self.precision)
        return copy if copy is not None and spec.gate and spec.name in self.family.openvino_graphs else None

    def feeds(self, spec: GraphSpec) -> list[dict[str, np.ndarray]]:
        return self.calibration.feeds(spec, self.sections, self.staging)


def openvino_step(spec: GraphSpec, fp32: Path, unfused: Path, check: dict[str, np.ndarray], gated: GraphInfo,
                  staging: Path, copies: OpenVinoCopies, say: Say) -> dict[str, Any]:
    """The graph's OpenVINO copy, written into ``staging`` and gated: its backends entry."""
    copy = copies.copy_of(spec)
    say(f"{spec.name}: writing and gating its OpenVINO copy ({copy.weights} weights, {copy.inference} inference)")
    if copy.weights == "int8" and copies.calibration.folder is None:
        return {"reason": "no --calibration: static int8 calibrates on your images and texts (docs/speed.md)"}
    feeds = copies.feeds(spec) if copy.weights == "int8" else []
    # an fp32 copy is gated as fp32 is, on the float32 references an fp32 graph's check stores
    openvino = openvino_copy(spec, fp32, unfused, stored(check, lossy=copy.lossy), gated, copy, feeds, staging)
    if copy.weights == "int8":
        openvino["calibration"] = copies.calibration.describe()
    say(f"{spec.name}: OpenVINO copy " + (f"kept, {summary(openvino['accuracy'])}" if has_copy(openvino)
                                          else f"not written: {openvino['reason']}"))
    return openvino


def lower_step(spec: GraphSpec, fp32: Path, precision: str, check: dict[str, np.ndarray], gated: GraphInfo,
               say: Say) -> tuple[Path, str, dict[str, Any]]:
    """The graph to keep, its precision and the manifest's accuracy record: each candidate of the precision's
    chain (int4 only where weights dominate; int8 in formats exact on every CPU, the fastest first) until one
    passes its gate, else fp32. The record is the attempt that decided, with any rejected one before it."""
    if precision in ("fp32", "bf16") or not spec.gate:  # bf16: an OpenVINO copy's, ONNX Runtime's graph stays fp32
        return fp32, "fp32", {}
    tries, kept, kept_precision = [], fp32, "fp32"
    for target, int8_format in precision_chain(spec, precision):
        candidate, gate = lower_precision(spec, fp32, target, check, gated, int8_format or "u8s7")
        reached = gate.get("reason") or summary(gate)
        tried = target + (f" ({int8_format})" if int8_format else "")
        tries.append({"precision_tried": target, **gate})
        if gate["passed"]:
            say(f"{spec.name}: {tried} kept, {reached}")
            kept, kept_precision = candidate, target
            break
        candidate.unlink(missing_ok=True)
        say(f"{spec.name}: {tried} failed its gate ({reached})")
    else:
        say(f"{spec.name}: keeping fp32")
    return kept, kept_precision, {**tries[-1], "rejected": tries[:-1]} if len(tries) > 1 else tries[-1]
