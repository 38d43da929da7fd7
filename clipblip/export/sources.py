"""Resolve the MODEL argument of `clipblip export`: a Hub id, a local directory, a prefixed reference
(``hf-hub:``, ``open_clip:``) or a random preset.

Which family a MODEL belongs to, and which module loads it, comes from the registry
(:mod:`clipblip.families`); this module holds no per-family code.
"""

from __future__ import annotations

from pathlib import Path

from .. import families
from ..errors import ModelSourceError
from .checkpoint import SourceModel, hub_reachable, read_config

__all__ = ["SourceModel", "load_source", "hub_reachable", "RANDOM_PREFIX"]

RANDOM_PREFIX = families.RANDOM_PREFIX


def load_source(ref: str, task: str | None = None, allow_pickle: bool = False) -> SourceModel:
    """Load MODEL for export; raise ModelSourceError with a one-line hint on failure.

    Weights load from safetensors only unless ``allow_pickle`` (pickle can run code). Remote code
    is never trusted: the model classes are transformers' own.
    """
    if ref.startswith(RANDOM_PREFIX):
        try:
            family, preset = families.preset(ref)
        except KeyError:
            raise ModelSourceError(
                f"{ref}: unknown random preset; choose one of {', '.join(families.preset_names())}"
            ) from None
        return families.load_exporter(family.name).build_random(preset, task)

    folder = Path(ref)
    claimed = families.by_reference(ref, folder.is_dir(), lambda name: (folder / name).is_file())
    local_only = folder.is_dir() or not hub_reachable()
    if claimed is not None:
        return families.load_exporter(claimed.name).load_pretrained(ref, task, None, local_only, allow_pickle)
    model_type, architectures = read_config(ref, local_only)
    try:
        family = families.by_model_type(model_type)
    except KeyError:
        raise ModelSourceError(f"{ref}: model type '{model_type}' is not supported "
                               f"(clipblip exports: {', '.join(families.model_types())})") from None
    return families.load_exporter(family.name).load_pretrained(ref, task, architectures, local_only, allow_pickle)
