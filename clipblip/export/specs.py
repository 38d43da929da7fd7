"""Graphs described as data: what each exported graph takes, gives, and how it is checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["TensorSpec", "GraphSpec", "TeacherForcing"]

Axes = dict[str, int]


@dataclass(frozen=True)
class TensorSpec:
    """A named graph input or output; ``axes`` holds symbolic names (dynamic) or fixed sizes."""

    name: str
    dtype: str
    axes: tuple[str | int, ...]

    def dynamic_axes(self) -> dict[int, str]:
        return {i: a for i, a in enumerate(self.axes) if isinstance(a, str)}

    def shape_for(self, sizes: Axes) -> tuple[int, ...]:
        return tuple(sizes[a] if isinstance(a, str) else a for a in self.axes)


@dataclass(frozen=True)
class TeacherForcing:
    """The decoder-step gate of a lower precision, on whole decodes instead of single random inputs.

    ``cross(generator)`` gives cross-attention K/V (name → tensor, batch first) computed by the model from
    check inputs. The fp32 step decodes greedily for ``steps`` tokens from ``bos_id``; the candidate is fed
    the same tokens, one per step, with its own KV cache (nothing else grows with the sequence). Per step and
    row: whether both pick the same top-1 token (a different pick that fp32 rates within ``near_tie`` nats of
    its own is a near-tie and not held against the candidate), and the cosine of their logits centred per
    row (softmax ignores a row's offset, so the centred cosine is the stricter one). The candidate passes if
    the top-1 agreement rate is at least ``min_top1`` and the least cosine at least ``min_cosine``.
    """

    bos_id: int
    cross: Callable[[torch.Generator], dict[str, torch.Tensor]]
    steps: int = 16
    min_top1: float = 0.9
    min_cosine: float = 0.99
    near_tie: float = 0.05
    logits: str = "logits"


@dataclass(frozen=True)
class GraphSpec:
    """One graph to export.

    ``module`` is the torch wrapper whose ``forward`` takes the inputs in order and returns the
    outputs in order. ``sample(sizes, generator)`` builds input tensors for given symbolic-axis
    sizes. The graph is traced at ``trace_sizes`` and checked at every entry of ``check_sizes``,
    which must differ from the traced sizes so that dynamic axes are really exercised.

    ``fusion`` names ONNX Runtime's transformer optimizer settings for the graph (model_type,
    num_heads, hidden_size), or None. ``gate`` gives, per output, the least cosine similarity to
    fp32 that a lower precision must keep (outputs not named are not gated); ``teacher`` adds the
    teacher-forced decoding gate for a KV-cached decoder step. ``weight_bound`` marks a graph whose batch-1
    run is bound by reading its weights (the decoder step): ``--precision int4`` gives it 4-bit weights, and
    ``--precision int8`` tries the weight-only 8-bit format first (``optimize.int8_order``).
    ``gate_sizes`` are the sizes of the gate's inputs (default: ``check_sizes``), which the model folder
    stores with their fp32 outputs (:mod:`clipblip.export.checks`): small enough to carry, a few MB at most.
    """

    name: str
    module: torch.nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sample: Callable[[Axes, torch.Generator], dict[str, torch.Tensor]]
    trace_sizes: Axes
    check_sizes: tuple[Axes, ...]
    atol: float = 1e-4
    fusion: dict | None = None
    gate: dict[str, float] = field(default_factory=dict)
    teacher: TeacherForcing | None = None
    weight_bound: bool = False
    file: str = field(default="")
    gate_sizes: tuple[Axes, ...] = ()

    def __post_init__(self):
        if not self.gate_sizes:
            object.__setattr__(self, "gate_sizes", self.check_sizes)

    @property
    def filename(self) -> str:
        return self.file or f"{self.name}.onnx"
