"""Tiny OpenCLIP checkpoints of each supported architecture, written in open_clip's local-dir layout.

Each is the structure of a real architecture with small sizes: open_clip's own ViT and text transformer (ViT-B-32, with
and without QuickGELU), timm towers built from the real timm entry points with their sizes overridden (SigLIP's ViT
with MAP pooling, MobileCLIP 2's FastViT MCi, PE-Core's RoPE ViT), and an XLM-RoBERTa text tower from a local config.
Their preprocessing covers open_clip's three resize modes, both interpolations and a fill colour. Imported by
tests only; torch, timm and open_clip are imported inside the functions.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
VIT = {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16}
OPENAI = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}

# texts whose ids must equal open_clip's, beyond the ones every export checks (clipblip.export.openclip.CHECK_TEXTS)
TRICKY_TEXTS = [
    "",
    "a photo of a cat",
    "&lt;b&gt;bold&lt;/b&gt; &amp;amp; &#x1F431; &nbsp;spaces",
    "Ã©tÃ© Ã  Paris â€” mojibake",
    "ｈｅｌｌｏ　ｗｏｒｌｄ！　全角",
    "一只猫坐在垫子上。猫が好きです。고양이",
    "👩‍👩‍👧‍👦 family 🏳️‍🌈 flag ✨",
    "tabs\tand\nnewlines\r\n  and   runs",
    "UPPER lower MiXeD, it's I'M",
    " ".join(["lengthy"] * 120),
    "<start_of_text> literal <end_of_text> tokens",
]


def register_tiny(base: str, **sizes: Any) -> str:
    """A timm model name whose entry point is ``base``'s with ``sizes`` overriding its widths and depths."""
    import timm
    from timm.models import register_model

    name = "clipblip_tiny_" + base
    if not timm.list_models(name):
        def create(pretrained: bool = False, **kwargs: Any):
            return timm.create_model(base, pretrained=False, **{**sizes, **kwargs})

        create.__name__ = name
        register_model(create)
    return name


def architectures() -> dict[str, dict[str, Any]]:
    """Tiny architecture name → {"model_cfg", "preprocess_cfg", "tokenizer" (None, "siglip", "gemma", "xlm")}."""
    siglip_vit = {"image_size": 32, "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none",
                  "timm_model_name": register_tiny("vit_base_patch16_siglip_224", img_size=32, patch_size=8,
                                                   embed_dim=32, depth=2, num_heads=2)}
    siglip_text = {"context_length": 16, "vocab_size": 4000, "width": 32, "heads": 2, "layers": 2,
                   "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6},
                   "tokenizer_kwargs": {"clean": "canonicalize"}}
    return {
        "ViT-B-32": {"model_cfg": {"embed_dim": 16, "vision_cfg": VIT, "text_cfg": TEXT},
                     "preprocess_cfg": {"size": 32, **OPENAI, "interpolation": "bicubic", "resize_mode": "shortest"}},
        "ViT-B-32-quickgelu": {
            "model_cfg": {"embed_dim": 16, "quick_gelu": True, "vision_cfg": VIT, "text_cfg": TEXT},
            "preprocess_cfg": {"size": 32, **OPENAI, "interpolation": "bilinear", "resize_mode": "longest",
                               "fill_color": 128}},
        "ViT-B-16-SigLIP": {
            "model_cfg": {"embed_dim": 32, "init_logit_bias": -10, "custom_text": True, "vision_cfg": siglip_vit,
                          "text_cfg": {**siglip_text, "hf_tokenizer_name": "timm/ViT-B-16-SigLIP"}},
            "preprocess_cfg": {"size": 32, **HALF, "interpolation": "bicubic", "resize_mode": "squash"},
            "tokenizer": "siglip"},
        "ViT-B-16-SigLIP2": {
            "model_cfg": {"embed_dim": 32, "init_logit_bias": -10, "custom_text": True, "vision_cfg": siglip_vit,
                          "text_cfg": {**siglip_text, "hf_tokenizer_name": "timm/ViT-B-16-SigLIP2",
                                       "act_kwargs": {"approximate": "tanh"}}},
            "preprocess_cfg": {"size": 32, **HALF, "interpolation": "bicubic", "resize_mode": "squash"},
            "tokenizer": "gemma"},
        "xlm-roberta-base-ViT-B-32": {
            "model_cfg": {"embed_dim": 16, "vision_cfg": VIT,
                          "text_cfg": {"hf_model_name": "xlm-roberta-base", "hf_tokenizer_name": "xlm-roberta-base",
                                       "hf_pooler_type": "mean_pooler", "context_length": 24,
                                       "hf_model_pretrained": False}},
            "preprocess_cfg": {"size": 32, **OPENAI, "interpolation": "bicubic", "resize_mode": "shortest"},
            "tokenizer": "xlm"},
        "MobileCLIP2-S0": {
            "model_cfg": {"embed_dim": 16, "custom_text": True, "text_cfg": {**TEXT, "no_causal_mask": True},
                          "vision_cfg": {"timm_model_pretrained": False, "timm_pool": "avg", "timm_proj": None,
                                         "timm_drop": 0.0, "timm_drop_path": 0.0, "image_size": 64,
                                         "timm_model_name": register_tiny("fastvit_mci0", layers=(1, 1, 1, 1),
                                                                          embed_dims=(8, 16, 32, 64))}},
            "preprocess_cfg": {"size": 64, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                               "interpolation": "bilinear", "resize_mode": "shortest"}},
        "PE-Core-B-16": {
            "model_cfg": {"embed_dim": 32, "custom_text": True, "text_cfg": {**TEXT, "context_length": 32},
                          "vision_cfg": {"image_size": 32, "timm_model_pretrained": False, "timm_pool": "map",
                                         "timm_proj": None,
                                         "timm_model_name": register_tiny("vit_pe_core_base_patch16_224", img_size=32,
                                                                          patch_size=8, embed_dim=32, depth=2,
                                                                          num_heads=2, ref_feat_shape=(4, 4),
                                                                          attn_pool_num_heads=2)}},
            "preprocess_cfg": {"size": 32, **HALF, "interpolation": "bilinear", "resize_mode": "squash"}},
    }


def save_checkpoint(arch: str, folder: Path) -> Path:
    """``arch``'s tiny checkpoint in open_clip's local-dir layout, random weights (seed 0) in safetensors."""
    import torch
    from open_clip.model import CLIP, CustomTextCLIP
    from safetensors.torch import save_file

    from clipblip.export import vocab

    spec = architectures()[arch]
    folder.mkdir(parents=True, exist_ok=True)
    text = spec["model_cfg"]["text_cfg"]
    if spec.get("tokenizer") == "siglip":
        vocab.siglip_tokenizer(text["vocab_size"], text["context_length"], str(folder)).save_pretrained(folder)
    elif spec.get("tokenizer") == "gemma":
        text["vocab_size"] = len(vocab.gemma_tokenizer(text["vocab_size"], text["context_length"], str(folder),
                                                        siglip2=True))
    elif spec.get("tokenizer") == "xlm":  # the tower's config where hf_model_name points (the hub's, offline)
        from transformers import XLMRobertaConfig

        tokenizer = vocab.xlm_roberta_tokenizer(4000, text["context_length"], str(folder))
        XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=text["context_length"] + 2, type_vocab_size=1,
                         pad_token_id=1, bos_token_id=0, eos_token_id=2).save_pretrained(folder / "text_tower")
        text["hf_model_name"] = str(folder / "text_tower")
    config = {"model_cfg": spec["model_cfg"], "preprocess_cfg": spec["preprocess_cfg"]}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    kwargs = {key: value for key, value in spec["model_cfg"].items() if key != "custom_text"}
    custom = spec["model_cfg"].get("custom_text") or "hf_model_name" in text  # as open_clip's factory decides
    model = (CustomTextCLIP if custom else CLIP)(**kwargs)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return folder


@functools.lru_cache(maxsize=None)
def open_clip_reference(checkpoint: Path):
    """open_clip's own (model, preprocess, tokenizer) for a local-dir checkpoint, loaded once."""
    from clipblip.export.openclip import import_open_clip

    open_clip = import_open_clip()
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(checkpoint))
    return model.eval(), preprocess, open_clip.get_tokenizer("local-dir:" + str(checkpoint))
