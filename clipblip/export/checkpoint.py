"""Checkpoints for export: the loaded model (SourceModel), its config, its task, its weights.

A leaf module: it imports only the stdlib, clipblip.errors and the registry at module level
(transformers inside functions), so every exporter can import it without an import cycle.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from .. import families
from ..errors import ModelSourceError, UsageError

__all__ = ["SourceModel", "hub_reachable", "read_config", "resolve_task", "load_pretrained_parts",
           "load_pretrained", "random_source"]


@dataclass
class SourceModel:
    """A loaded PyTorch model with the processor facts an export needs."""

    family: str
    task: str | None  # the export task (BLIP: caption, vqa, itm); None for a family without --task
    model: Any  # torch.nn.Module, eval mode
    image_processor: Any
    tokenizer: Any
    source: dict[str, Any]
    fast_tokenizer: Any = None  # a tokenizers.Tokenizer when ``tokenizer`` has none (SigLIP's SentencePiece)
    facts: dict[str, Any] | None = None  # what a family's exporter worked out while loading (OpenCLIP: its configs)

    def tokenizer_json(self) -> Any:
        """The ``tokenizers`` form the engine runs (saved as the folder's tokenizer.json)."""
        return self.fast_tokenizer if self.fast_tokenizer is not None else self.tokenizer.backend_tokenizer


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


def read_config(ref: str, local_only: bool) -> tuple[str, list[str]]:
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
            f"save_pretrained, or a random preset ({', '.join(families.preset_names())})"
        ) from None


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def resolve_task(family: str, architectures: list[str] | None, task: str | None, ref: str) -> str | None:
    """The export task: --task if given (it must agree with the checkpoint), else the architecture's.

    A family without export tasks (CLIP) has one export: the result is None, and a ``task`` is refused.
    """
    fam = families.family(family)
    choices = fam.export_tasks
    if not choices:
        if task is not None:  # refused rather than ignored
            raise UsageError(f"--task {task}: {fam.title} exports have no task to choose; leave out --task")
        return None
    if task is not None and task not in choices:
        raise UsageError(f"--task {task}: choose {_either(choices)}")
    classes = {name: fam.model_class(name) for name in choices}
    found = [name for arch in architectures or [] for name, cls in classes.items() if arch == cls]
    if task is not None and found and task not in found:
        raise ModelSourceError(f"{ref}: is a {architectures[0]} ({found[0]}) checkpoint; --task {task} needs a "
                               f"{classes[task]} checkpoint")
    if task is None and not found:
        raise ModelSourceError(f"{ref}: cannot tell the {fam.title} task from its architectures "
                               f"{architectures}; pass --task {'|'.join(choices)}")
    return task or found[0]


def load_pretrained_parts(ref: str, model_class, local_only: bool, allow_pickle: bool, family: str,
                          task: str | None, to_fast: Callable[[Any], Any] | None = None) -> SourceModel:
    """A checkpoint's model (eager attention, eval mode), image processor and fast tokenizer; ``to_fast``
    converts a family's tokenizer that has no ``tokenizers`` form (SigLIP's SentencePiece) into one."""
    from transformers import AutoImageProcessor, AutoTokenizer

    try:
        model = model_class.from_pretrained(ref, use_safetensors=None if allow_pickle else True,
                                            local_files_only=local_only, attn_implementation="eager").eval()
    except OSError as e:
        raise ModelSourceError(f"{ref}: cannot load {families.title(family)} weights ({str(e).splitlines()[0]}); "
                               f"clipblip loads safetensors unless --allow-pickle") from None
    try:
        # the PIL processor, which the engine reproduces (with torchvision installed, transformers 5 would pick its
        # torchvision one: the same facts, other pixels)
        processor = AutoImageProcessor.from_pretrained(ref, local_files_only=local_only, backend="pil")
        tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=local_only)
    except (OSError, ValueError) as e:
        raise ModelSourceError(f"{ref}: cannot load the processor or tokenizer ({str(e).splitlines()[0]})") from None
    fast = None
    if not hasattr(tokenizer, "backend_tokenizer"):
        if to_fast is None:
            raise ModelSourceError(f"{ref}: the tokenizer has no tokenizer.json form (a fast tokenizer is required)")
        fast = to_fast(tokenizer)
    return SourceModel(family, task, model, processor, tokenizer,
                       {"model": ref, "kind": "pretrained", "random_weights": False}, fast)


def load_pretrained(family: str, ref: str, task: str | None, architectures: list[str] | None, local_only: bool,
                    allow_pickle: bool = False, to_fast: Callable[[Any], Any] | None = None) -> SourceModel:
    """Load a checkpoint of ``family`` with the registry's transformers class for its export task.

    Only transformers' own classes are used: a checkpoint's remote code is never run.
    """
    import transformers

    task = resolve_task(family, architectures, task, ref)
    model_class = getattr(transformers, families.family(family).model_class(task))
    return load_pretrained_parts(ref, model_class, local_only, allow_pickle, family, task, to_fast)


def random_source(family: str, preset: families.Preset, task: str | None, model, image_processor,
                  tokenizer, fast_tokenizer: Any = None) -> SourceModel:
    """A SourceModel for a random-weight preset (seed 0)."""
    return SourceModel(family, task, model, image_processor, tokenizer, {
        "model": families.RANDOM_PREFIX + preset.name, "kind": "random", "random_weights": True, "seed": 0,
    }, fast_tokenizer)
