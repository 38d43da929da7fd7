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

__all__ = ["SourceModel", "load_source", "source_family", "check_needs", "hub_reachable", "RANDOM_PREFIX"]

RANDOM_PREFIX = families.RANDOM_PREFIX


def load_source(ref: str, task: str | None = None, allow_pickle: bool = False) -> SourceModel:
    """Load MODEL for export; raise ModelSourceError with a one-line hint on failure.

    Weights load from safetensors only unless ``allow_pickle`` (pickle can run code). Remote code
    is never trusted: the model classes are transformers' own.
    """
    if ref.startswith(RANDOM_PREFIX):
        family, preset = _preset(ref)
        return families.load_exporter(family.name).build_random(preset, task)
    local_only = Path(ref).is_dir() or not hub_reachable()
    family, architectures = _checkpoint_family(ref, local_only)
    return families.load_exporter(family.name).load_pretrained(ref, task, architectures, local_only, allow_pickle)


def source_family(ref: str) -> families.Family:
    """The family of MODEL, from its preset name, its prefix, or its folder's files alone (no weights are read)."""
    if ref.startswith(RANDOM_PREFIX):
        return _preset(ref)[0]
    return _checkpoint_family(ref, Path(ref).is_dir() or not hub_reachable())[0]


def check_needs(ref: str) -> None:
    """ModuleNotFoundError (which the CLI turns into the extra to install) before anything loads, where MODEL's family
    is plain from its name or folder (:func:`_claimed`) and needs a package not installed."""
    import importlib.util

    family = _claimed(ref)
    for package in family.export_needs if family else ():
        try:
            found = importlib.util.find_spec(package) is not None
        except ValueError:  # a module set to None in sys.modules: not importable
            found = False
        if not found:
            raise ModuleNotFoundError(f"No module named {package!r}", name=package)


def _claimed(ref: str) -> families.Family | None:
    """The family plain from MODEL without reading config.json: a known preset's, or one claimed by prefix or by a
    folder's own config file (``families.by_reference``: OpenCLIP); None otherwise (an unknown preset included:
    load_source names it in its turn)."""
    if ref.startswith(RANDOM_PREFIX):
        try:
            return families.preset(ref)[0]
        except KeyError:
            return None
    folder = Path(ref)
    return families.by_reference(ref, folder.is_dir(), lambda name: (folder / name).is_file())


def _preset(ref: str) -> tuple[families.Family, families.Preset]:
    try:
        return families.preset(ref)
    except KeyError:
        raise ModelSourceError(
            f"{ref}: unknown random preset; choose one of {', '.join(families.preset_names())}"
        ) from None


def _checkpoint_family(ref: str, local_only: bool) -> tuple[families.Family, list[str] | None]:
    """The family of a checkpoint and its architectures: claimed (:func:`_claimed`), else by its config.json's
    model_type."""
    claimed = _claimed(ref)
    if claimed is not None:
        return claimed, None
    model_type, architectures = read_config(ref, local_only)
    try:
        return families.by_model_type(model_type), architectures
    except KeyError:
        raise ModelSourceError(f"{ref}: model type '{model_type}' is not supported "
                               f"(clipblip exports: {', '.join(families.model_types())})") from None
