"""Resolve the MODEL argument of `clipblip export`: a Hub id, a local directory, or a random preset."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from ..errors import ModelSourceError

__all__ = ["SourceModel", "load_source", "RANDOM_PRESETS", "hub_reachable"]

RANDOM_PREFIX = "random:"


@dataclass
class SourceModel:
    """A loaded PyTorch model with the processor facts an export needs."""

    family: str
    task: str | None
    model: Any  # torch.nn.Module, eval mode
    image_processor: Any
    tokenizer: Any
    source: dict[str, Any]


def load_pretrained_parts(ref: str, model_class, local_only: bool, allow_pickle: bool, family: str, task: str | None):
    """A checkpoint's model (eager attention, eval mode), image processor and fast tokenizer."""
    from transformers import AutoImageProcessor, AutoTokenizer

    try:
        model = model_class.from_pretrained(ref, use_safetensors=None if allow_pickle else True,
                                            local_files_only=local_only, attn_implementation="eager").eval()
    except OSError as e:
        raise ModelSourceError(f"{ref}: cannot load {family.upper()} weights ({str(e).splitlines()[0]}); clipblip "
                               f"loads safetensors unless --allow-pickle") from None
    try:
        processor = AutoImageProcessor.from_pretrained(ref, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=local_only)
    except (OSError, ValueError) as e:
        raise ModelSourceError(f"{ref}: cannot load the processor or tokenizer ({str(e).splitlines()[0]})") from None
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise ModelSourceError(f"{ref}: the tokenizer has no tokenizer.json form (a fast tokenizer is required)")
    return SourceModel(family, task, model, processor, tokenizer,
                       {"model": ref, "kind": "pretrained", "random_weights": False})


def _random_presets() -> dict[str, Callable[[str | None], SourceModel]]:
    from . import blip, clip

    return {**clip.RANDOM_PRESETS, **blip.RANDOM_PRESETS}


RANDOM_PRESETS = ("clip-base", "clip-tiny", "blip-base", "blip-tiny")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint accepts a TCP connection (a quick check before a slow retry loop)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _read_config(ref: str, local_only: bool) -> tuple[str, list[str]]:
    """(model_type, architectures) of a local directory or a Hub id."""
    path = Path(ref)
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise ModelSourceError(f"{ref}: no config.json; pass a directory written by save_pretrained")
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
            return data.get("model_type", ""), list(data.get("architectures") or [])
        except (OSError, json.JSONDecodeError, AttributeError) as e:
            raise ModelSourceError(f"{config}: unreadable ({e})") from None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(ref, local_files_only=local_only)
        return config.model_type, list(config.architectures or [])
    except Exception:
        where = "the local Hugging Face cache" if local_only else "the Hub or the local cache"
        raise ModelSourceError(
            f"{ref}: not a local directory and not found in {where}; pass a directory written by "
            f"save_pretrained, or a random preset ({', '.join(RANDOM_PREFIX + p for p in RANDOM_PRESETS)})"
        ) from None


def load_source(ref: str, task: str | None = None, allow_pickle: bool = False) -> SourceModel:
    """Load MODEL for export; raise ModelSourceError with a one-line hint on failure.

    Weights load from safetensors only unless ``allow_pickle`` (pickle can run code). Remote code
    is never trusted: the model classes are transformers' own.
    """
    if ref.startswith(RANDOM_PREFIX):
        name = ref[len(RANDOM_PREFIX):]
        presets = _random_presets()
        if name not in presets:
            raise ModelSourceError(
                f"{ref}: unknown random preset; choose one of {', '.join(RANDOM_PREFIX + p for p in presets)}"
            )
        return presets[name](task)

    local_only = Path(ref).is_dir() or not hub_reachable()
    model_type, architectures = _read_config(ref, local_only)
    if model_type == "clip":
        from . import clip

        return clip.load_pretrained(ref, local_only=local_only, allow_pickle=allow_pickle)
    if model_type == "blip":
        from . import blip

        return blip.load_pretrained(ref, local_only, task, architectures, allow_pickle)
    raise ModelSourceError(f"{ref}: model type '{model_type}' is not supported (clipblip exports: clip, blip)")
