"""CLIP: the two towers (each with its projection) as graph specs, and the facts the engine needs."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .. import families
from ..errors import ModelSourceError
from . import checkpoint
from .checkpoint import SourceModel
from .specs import GraphSpec, TensorSpec
from .vocab import clip_tokenizer

__all__ = [
    "ClipImageTower", "ClipTextTower", "attention_outputs", "tower_specs", "tower_facts", "graph_specs",
    "manifest_sections", "model_facts", "load_pretrained", "build_random",
]

FAMILY = "clip"


class ClipImageTower(nn.Module):
    """pixel_values → projected image embedding (not normalised) [, each layer's attention weights]."""

    def __init__(self, model: nn.Module, attentions: bool = False):
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection
        self.attentions = attentions

    def forward(self, pixel_values: torch.Tensor):
        out = self.vision_model(pixel_values=pixel_values, output_attentions=self.attentions)
        embeds = self.visual_projection(out.pooler_output)  # (batch, embed_dim)
        return (embeds, *out.attentions) if self.attentions else embeds  # attentions: (batch, heads, T, T)


class ClipTextTower(nn.Module):
    """input_ids, attention_mask → projected text embedding pooled at end-of-text [, attention weights]."""

    def __init__(self, model: nn.Module, attentions: bool = False):
        super().__init__()
        self.text_model = model.text_model
        self.text_projection = model.text_projection
        self.attentions = attentions

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=self.attentions)
        embeds = self.text_projection(out.pooler_output)  # (batch, embed_dim)
        return (embeds, *out.attentions) if self.attentions else embeds  # attentions: (batch, heads, seq, seq)


def attention_outputs(layers: int, heads: int, query_axis, key_axis, prefix: str = "attentions") -> tuple:
    """One (batch, heads, queries, keys) attention-weights output per layer."""
    return tuple(TensorSpec(f"{prefix}_{i}", "float32", ("batch", heads, query_axis, key_axis))
                 for i in range(layers))


def token_batch(
    sizes: dict[str, int], generator: torch.Generator, *, high: int, bos_id: int, eos_id: int, pad_id: int,
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """Random token rows (ids below ``high``) of varied lengths: [bos] ... [eos], padded (mask 0) on the
    tokenizer's side, as the engine will feed them: a graph checked on right padding alone could be wrong
    on left padding (ONNX Runtime's BERT attention fusion is)."""
    batch, seq = sizes["batch"], sizes["sequence"]
    input_ids = torch.randint(0, high, (batch, seq), generator=generator, dtype=torch.int64)
    attention_mask = torch.zeros(batch, seq, dtype=torch.int64)
    for row in range(batch):
        length = max(2, seq - 3 * row)
        input_ids[row, 0] = bos_id
        input_ids[row, length - 1] = eos_id
        input_ids[row, length:] = pad_id
        attention_mask[row, :length] = 1
        if padding_side == "left":
            input_ids[row] = input_ids[row].roll(seq - length)
            attention_mask[row] = attention_mask[row].roll(seq - length)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def graph_specs(source: SourceModel, attentions: bool = False) -> list[GraphSpec]:
    sections = manifest_sections(source)
    tok = sections["tokenizer"]
    # ids below bos/eos: checkpoints with the legacy eos_token_id=2 pool at the highest id
    return tower_specs(source, sections, ClipImageTower(source.model, attentions),
                       ClipTextTower(source.model, attentions), attentions, fusion_types=("clip", "clip"),
                       ids_below=min(tok["bos_id"], tok["eos_id"]))


def tower_specs(source: SourceModel, sections: dict[str, Any], image_tower: nn.Module, text_tower: nn.Module,
                attentions: bool, fusion_types: tuple[str | None, str | None],
                ids_below: int | None = None) -> list[GraphSpec]:
    """The image and text tower graphs of a CLIP-like model (CLIP, Chinese-CLIP, SigLIP): each tower
    maps its input to the projected, unnormalised embedding; the family's manifest ``sections`` give the
    sizes and the padding. ``fusion_types``: ONNX Runtime's optimizer model type for the (image, text)
    tower, or None."""
    model = source.model
    vision, text = model.config.vision_config, model.config.text_config
    facts, tok = sections["model"], sections["tokenizer"]
    size = vision.image_size
    tokens = facts["image_tokens"]
    image_attn = attention_outputs(vision.num_hidden_layers, vision.num_attention_heads, tokens, tokens) \
        if attentions else ()
    text_attn = attention_outputs(text.num_hidden_layers, text.num_attention_heads, "sequence", "sequence") \
        if attentions else ()
    embed_axes = ("batch", facts["embed_dim"])

    def image_sample(sizes, generator):
        return {"pixel_values": torch.randn(sizes["batch"], 3, size, size, generator=generator)}

    def text_sample(sizes, generator):
        return token_batch(sizes, generator, high=ids_below or text.vocab_size, bos_id=tok["bos_id"],
                           eos_id=tok["eos_id"], pad_id=tok["pad_id"], padding_side=tok["padding_side"])

    def fusion(config, model_type):
        return model_type and {"model_type": model_type, "num_heads": config.num_attention_heads,
                               "hidden_size": config.hidden_size}

    max_len = tok["max_length"]
    return [
        GraphSpec(
            name="image_tower",
            module=image_tower.eval(),
            inputs=(TensorSpec("pixel_values", "float32", ("batch", 3, size, size)),),
            outputs=(TensorSpec("image_embeds", "float32", embed_axes), *image_attn),
            sample=image_sample,
            trace_sizes={"batch": 2},
            check_sizes=({"batch": 1}, {"batch": 3}),
            gate_sizes=({"batch": 2},),  # stored in the folder: 2 x 3 x 224 x 224 float16 = 0.6 MB on ViT-B/32
            fusion=fusion(vision, fusion_types[0]) or None,
            gate={"image_embeds": 0.999},
        ),
        GraphSpec(
            name="text_tower",
            module=text_tower.eval(),
            inputs=(
                TensorSpec("input_ids", "int64", ("batch", "sequence")),
                TensorSpec("attention_mask", "int64", ("batch", "sequence")),
            ),
            outputs=(TensorSpec("text_embeds", "float32", embed_axes), *text_attn),
            sample=text_sample,
            trace_sizes={"batch": 2, "sequence": min(9, max_len)},
            check_sizes=(
                {"batch": 1, "sequence": min(5, max_len)},
                {"batch": 3, "sequence": max_len},
                {"batch": 4, "sequence": min(12, max_len)},
            ),
            fusion=fusion(text, fusion_types[1]) or None,
            gate={"text_embeds": 0.999},
        ),
    ]


RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def image_facts(processor: Any, input_size: int) -> dict[str, Any]:
    """Preprocessing from a transformers image processor, as plain data for the manifest."""

    def size_dict(size) -> dict[str, int] | None:
        if size is None:
            return None
        get = size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))
        return {k: int(get(k)) for k in ("shortest_edge", "height", "width") if get(k) is not None}

    resample = int(getattr(processor, "resample", 3))
    facts = {
        "do_convert_rgb": bool(getattr(processor, "do_convert_rgb", True)),
        "resize": size_dict(processor.size) if processor.do_resize else None,
        "resample": RESAMPLE_NAMES.get(resample, "bicubic"),
        "center_crop": size_dict(processor.crop_size) if getattr(processor, "do_center_crop", False) else None,
        "rescale_factor": float(processor.rescale_factor) if processor.do_rescale else None,
        "mean": [float(m) for m in processor.image_mean] if processor.do_normalize else None,
        "std": [float(s) for s in processor.image_std] if processor.do_normalize else None,
        "input_size": [input_size, input_size],
    }
    final = facts["center_crop"] or facts["resize"] or {}
    if final.get("height", input_size) != input_size or final.get("width", input_size) != input_size:
        raise ModelSourceError(
            f"image processor gives {final} but the model takes {input_size}x{input_size} images"
        )
    return facts


def tokenizer_facts(source: SourceModel, padding: str = "longest") -> dict[str, Any]:
    """How the engine tokenises: the file, max length, special ids, and how rows are padded.

    ``padding`` is "longest" (pad a batch to its longest row, masked) or "max_length" (every row to
    ``max_length``, as SigLIP's processor does: the model was trained so). A tokenizer whose inputs have no
    attention mask gets a mask of ones (``attention_mask`` false).
    """
    tok, text = source.tokenizer, source.model.config.text_config
    max_length = min(int(tok.model_max_length or 10**9), int(text.max_position_embeddings))
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    return {
        "file": "tokenizer.json",
        "max_length": max_length,
        "bos_id": int(bos if bos is not None else eos),
        "eos_id": int(eos),
        "pad_id": int(tok.pad_token_id if tok.pad_token_id is not None else eos),
        "padding": padding,
        "padding_side": str(getattr(tok, "padding_side", "right") or "right"),
        "attention_mask": "attention_mask" in list(getattr(tok, "model_input_names", ["attention_mask"])),
    }


def model_facts(source: SourceModel) -> dict[str, Any]:
    return tower_facts(source.model, embed_dim=source.model.config.projection_dim, class_token=True)


def tower_facts(model: nn.Module, embed_dim: int, class_token: bool) -> dict[str, Any]:
    """logit_scale, the embedding width and the image grid; image tokens = the patches (+ the class token)."""
    vision = model.config.vision_config
    grid = vision.image_size // vision.patch_size
    return {
        "logit_scale": float(model.logit_scale.detach().exp()),
        "embed_dim": int(embed_dim),
        "image_size": int(vision.image_size),
        "patch_grid": [grid, grid],
        "class_token": class_token,
        "image_tokens": grid * grid + int(class_token),
    }


def dual_encoder_sections(source: SourceModel, tokenizer: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """The manifest sections of a CLIP-like family; scoring and default prompt come from its registry entry."""
    family = families.family(source.family)
    return {
        "tasks": [t.name for t in family.tasks_of(source.task)],
        "image": image_facts(source.image_processor, source.model.config.vision_config.image_size),
        "tokenizer": tokenizer,
        "model": {**model, "scoring": family.scoring, "prompt_template": family.prompt_template},
    }


def manifest_sections(source: SourceModel) -> dict[str, Any]:
    return dual_encoder_sections(source, tokenizer_facts(source), model_facts(source))


# --- loading ----------------------------------------------------------------------------------------

def load_pretrained(ref: str, task: str | None, architectures: list[str] | None, local_only: bool,
                    allow_pickle: bool = False) -> SourceModel:
    """A CLIP checkpoint (CLIP has one export: ``task`` is not used)."""
    return checkpoint.load_pretrained(FAMILY, ref, task, architectures, local_only, allow_pickle)


def build_random(preset: families.Preset, task: str | None = None) -> SourceModel:
    """A seeded random CLIP of the preset's architecture, with a CLIP image processor and tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    checkpoint.resolve_task(FAMILY, None, task, families.RANDOM_PREFIX + preset.name)  # refuses a --task
    torch.manual_seed(0)
    config = CLIPConfig(**copy.deepcopy(preset.config))
    model = CLIPModel._from_config(config, attn_implementation="eager").eval()
    size = config.vision_config.image_size
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    tokenizer = clip_tokenizer(config.text_config.max_position_embeddings)
    return checkpoint.random_source(FAMILY, preset, None, model, processor, tokenizer)
