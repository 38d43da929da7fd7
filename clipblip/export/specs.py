"""Graphs described as data: what each exported graph takes, gives, and how it is checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["TensorSpec", "GraphSpec"]

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
class GraphSpec:
    """One graph to export.

    ``module`` is the torch wrapper whose ``forward`` takes the inputs in order and returns the
    outputs in order. ``sample(sizes, generator)`` builds input tensors for given symbolic-axis
    sizes. The graph is traced at ``trace_sizes`` and checked at every entry of ``check_sizes``,
    which must differ from the traced sizes so that dynamic axes are really exercised.

    ``fusion`` names ONNX Runtime's transformer optimizer settings for the graph (model_type,
    num_heads, hidden_size), or None. ``gate`` gives, per output, the least cosine similarity to
    fp32 that a lower precision must keep (outputs not named are not gated).
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
    file: str = field(default="")

    @property
    def filename(self) -> str:
        return self.file or f"{self.name}.onnx"
