"""The steps that need PyTorch, done for every graph before any ONNX step: trace each graph to ONNX and keep
PyTorch's answers for its parity check on disk (and a decoder step's teacher-forcing inputs); then the model's
weights are let go, and the ONNX steps run without them.

While tracing, the weights are memory-mapped from a file in the staging folder and mapped afresh for each
graph, so that only the weights of the graph being traced are resident: a BLIP VQA model holds 1.2 GB of
weights, of which its image tower needs 0.34.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..memory import release_memory
from .convert import Reference, export_graph
from .meter import LARGE_WEIGHTS, Meter
from .specs import GraphSpec

__all__ = ["Traced", "trace_graphs", "torch_reference", "teacher_inputs", "mapped_weights"]

REFERENCE_SEED = 1  # the parity check's inputs (the gate's are seeded 2, the teacher's cross K/V 3)
TEACHER_SEED = 3


@dataclass(frozen=True)
class Traced:
    """A traced fp32 graph (its weights in a data file beside it), PyTorch's answers for its parity check, and for
    a decoder step the cross K/V its teacher-forced gate decodes over (name → array, batch first)."""

    graph: Path
    reference: Reference
    cross: dict[str, np.ndarray] | None


def run_torch(spec: GraphSpec, feeds: dict[str, torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        out = spec.module(*(feeds[t.name] for t in spec.inputs))
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy() for o in out]


def torch_reference(spec: GraphSpec, folder: Path) -> Reference:
    """Run ``spec.module`` on seeded inputs at each of ``spec.check_sizes`` and store inputs and outputs in
    ``folder`` (a new folder)."""
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(REFERENCE_SEED)
    names: tuple[str, ...] = ()
    count = 0
    for k, sizes in enumerate(spec.check_sizes):
        feeds = spec.sample(sizes, generator)
        names = tuple(feeds)
        for i, value in enumerate(feeds.values()):
            np.save(folder / f"case{k}.in{i}.npy", value.numpy())
        outputs = run_torch(spec, feeds)
        for j, value in enumerate(outputs):
            np.save(folder / f"case{k}.out{j}.npy", value)
        count = len(outputs)
        del feeds, outputs
    return Reference(folder, tuple(spec.check_sizes), names, count)


def teacher_inputs(spec: GraphSpec) -> dict[str, np.ndarray] | None:
    """The cross K/V over which a decoder step's teacher-forced gate decodes, made by the model (seeded)."""
    if spec.teacher is None:
        return None
    cross = spec.teacher.cross(torch.Generator().manual_seed(TEACHER_SEED))
    return {name: value.detach().cpu().numpy() for name, value in cross.items()}


@contextmanager
def mapped_weights(model: torch.nn.Module, path: Path) -> Iterator[Callable[[], None]]:
    """Move the model's parameters into the file ``path`` and map them back from it; yields ``remap()``, which
    maps the file afresh, so that the pages the previous graph touched are no longer this process's. The same
    Parameter objects are kept (tied weights stay tied); on leaving, the weights are let go (the model is then
    empty) and the file is removed."""
    parameters = list(model.named_parameters(remove_duplicate=False))
    torch.save({name: p.detach() for name, p in parameters}, path)  # a tied weight is stored once
    # what is let go after may sit in reference cycles: collected where it is much (a full collection takes 0.2
    # to 0.5 s with torch and transformers loaded, far more than a tiny model's whole export)
    large = sum(p.numel() * p.element_size() for _, p in model.named_parameters()) >= LARGE_WEIGHTS

    def remap() -> None:
        state = torch.load(path, mmap=True, weights_only=True)
        with torch.no_grad():
            for name, p in parameters:
                p.data = state[name]
        del state
        release_memory()

    try:
        remap()
        yield remap
    finally:
        with torch.no_grad():
            for _, p in parameters:
                p.data = torch.empty(0, dtype=p.dtype)
        path.unlink(missing_ok=True)
        release_memory(collect=large)


def trace_graphs(model: torch.nn.Module, specs: list[GraphSpec], folder: Path, opset: int, meter: Meter,
                 say: Callable[[str], Any], done: Callable[[int], Any] = lambda count: None) -> dict[str, Traced]:
    """Trace every graph into ``folder/<graph>/`` with PyTorch's answers beside it (``done(count)`` after each);
    the model is empty after."""
    crosses = {spec.name: teacher_inputs(spec) for spec in specs}  # before the weights move: they need the model
    folder.mkdir()
    traced = {}
    with mapped_weights(model, folder / "weights.pt") as remap:
        for spec in specs:
            work = folder / spec.name
            work.mkdir(parents=True)
            remap()
            with meter.step(f"{spec.name}/trace"):
                say(f"exporting {spec.name}")
                export_graph(spec, work / spec.filename, opset)
            with meter.step(f"{spec.name}/pytorch"):
                say(f"running {spec.name} in PyTorch")
                reference = torch_reference(spec, work / "pytorch")
            traced[spec.name] = Traced(work / spec.filename, reference, crosses[spec.name])
            done(len(traced))
    return traced
