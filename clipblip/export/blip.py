"""BLIP: image tower, KV-cached decoder step, cross-attention K/V, question encoder, ITM/ITC heads.

The decoder step is written here against the checkpoint's own modules (same weights, same
operation order as transformers' eager attention) so that its cache is explicit tensors:

    decoder_step(input_ids, past_key_0, past_value_0, ..., cross_key_0, cross_value_0, ...)
        -> logits (batch, vocab) of the last position, present_key_0, present_value_0, ...

Cross-attention keys/values depend only on the image (or question) and are computed once by the
``cross_kv`` graph; recomputing them per step would cost ~8 GMAC a token on BLIP base.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from .. import families
from ..engine.generate import option_rules
from . import checkpoint
from .checkpoint import SourceModel
from .clip import attention_outputs, image_facts, token_batch
from .specs import GraphSpec, TeacherForcing, TensorSpec
from .vocab import blip_tokenizer

__all__ = ["graph_specs", "manifest_sections", "load_pretrained", "build_random"]

FAMILY = "blip"

# The decoder step's teacher-forced gate for lower precisions (16 greedy steps from [DEC], two rows): the
# share of decisions where the candidate picks fp32's top-1 token (near-ties excused, see TeacherForcing), and
# the least cosine of its centred logits. Measured 2026-11-27 (top-1 agreement, exact agreement, cosine):
#   random:blip-tiny  int8 1.0, 1.0,   0.9998 (kept)   int4 1.0,   0.72, 0.987 (rejected → int8)
#   random:blip-base  int8 1.0, 0.84,  0.9994 (kept)   int4 0.625, 0.53, 0.970 (rejected → int8)
# Random weights quantise to 4 bits worse than trained ones do, and decide many steps by near-ties.
TEACHER_GATE = {"steps": 16, "min_top1": 0.9, "min_cosine": 0.99}
# The teacher-forced decode is stored in the folder (engine/checks.py): its cross K/V come from the first image
# tokens only (class token + 8 patches), 2 x 12 layers x 2 x 9 x 768 float16 ≈ 0.66 MB on BLIP base, not 42 MB.
TEACHER_CROSS_TOKENS = 9


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(batch, seq, heads * head_dim) → (batch, heads, seq, head_dim)"""
    return x.view(x.shape[0], x.shape[1], -1, head_dim).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, seq, head_dim) → (batch, seq, heads * head_dim)"""
    x = x.permute(0, 2, 1, 3).contiguous()
    return x.view(x.shape[0], x.shape[1], -1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
    """Eager scaled dot-product attention in transformers' BLIP operation order → (context, weights)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (batch, heads, new, keys)
    if mask is not None:
        scores = scores + mask
    weights = nn.functional.softmax(scores, dim=-1)
    return torch.matmul(weights, v), weights  # (batch, heads, new, head_dim), (batch, heads, new, keys)


class BlipImageTower(nn.Module):
    """pixel_values → image_embeds, the vision tower's patch tokens (class token first) [, attentions]."""

    def __init__(self, model: nn.Module, attentions: bool = False):
        super().__init__()
        self.vision_model = model.vision_model
        self.attentions = attentions

    def forward(self, pixel_values: torch.Tensor):
        out = self.vision_model(pixel_values=pixel_values, output_attentions=self.attentions)
        embeds = out.last_hidden_state  # (batch, tokens, width)
        return (embeds, *out.attentions) if self.attentions else embeds


class CrossKV(nn.Module):
    """Encoder states (image or question) → every decoder layer's cross-attention keys and values."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.layers = decoder.bert.encoder.layer
        self.head_dim = self.layers[0].crossattention.self.attention_head_size

    def forward(self, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = []
        for layer in self.layers:
            attention = layer.crossattention.self
            out.append(split_heads(attention.key(encoder_hidden_states), self.head_dim))  # (batch, heads, enc, hd)
            out.append(split_heads(attention.value(encoder_hidden_states), self.head_dim))
        return tuple(out)


class DecoderStep(nn.Module):
    """New tokens + past self-attention K/V + cross K/V → last-position logits + present K/V.

    With ``attentions``, also every layer's self- and cross-attention weights of the new tokens.
    """

    def __init__(self, decoder: nn.Module, attentions: bool = False):
        super().__init__()
        self.embeddings = decoder.bert.embeddings
        self.layers = decoder.bert.encoder.layer
        self.head = decoder.cls
        self.head_dim = self.layers[0].attention.self.attention_head_size
        self.attentions = attentions

    def forward(self, input_ids: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(self.layers)
        past, cross = cache[: 2 * n], cache[2 * n :]
        past_len, new_len = past[0].shape[2], input_ids.shape[1]

        positions = torch.arange(new_len, device=input_ids.device) + past_len
        hidden = self.embeddings.word_embeddings(input_ids) + self.embeddings.position_embeddings(positions)[None]
        hidden = self.embeddings.LayerNorm(hidden)  # (batch, new, width)

        # causal mask over [past, new]: a new token at position p sees keys at positions <= p
        keys_pos = torch.arange(past_len + new_len, device=input_ids.device)
        blocked = keys_pos[None, :] > positions[:, None]  # (new, past + new)
        mask = torch.where(blocked, torch.finfo(hidden.dtype).min, 0.0).to(hidden.dtype)[None, None]

        presents, self_weights, cross_weights = [], [], []
        for i, layer in enumerate(self.layers):
            self_attn = layer.attention.self
            q = split_heads(self_attn.query(hidden), self.head_dim)
            k = torch.cat([past[2 * i], split_heads(self_attn.key(hidden), self.head_dim)], dim=2)
            v = torch.cat([past[2 * i + 1], split_heads(self_attn.value(hidden), self.head_dim)], dim=2)
            presents += [k, v]  # (batch, heads, past + new, head_dim)
            context, weights = attend(q, k, v, mask)
            self_weights.append(weights)
            attn_out = layer.attention.output(merge_heads(context), hidden)

            cross_attn = layer.crossattention.self
            q = split_heads(cross_attn.query(attn_out), self.head_dim)
            context, weights = attend(q, cross[2 * i], cross[2 * i + 1], None)
            cross_weights.append(weights)  # (batch, heads, new, encoder_sequence)
            cross_out = layer.crossattention.output(merge_heads(context), attn_out)
            hidden = layer.output(layer.intermediate(cross_out), cross_out)

        logits = self.head(hidden[:, -1])  # (batch, vocab)
        if self.attentions:
            return (logits, *presents, *self_weights, *cross_weights)
        return (logits, *presents)


class QuestionEncoder(nn.Module):
    """VQA: question tokens cross-attending to the image → question_embeds (batch, seq, width)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.text_encoder = model.text_encoder

    def forward(self, input_ids, attention_mask, image_embeds):
        image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.int64, device=image_embeds.device)
        return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                 encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask,
                                 return_dict=True).last_hidden_state


class ItmHead(nn.Module):
    """Retrieval ITM: text cross-attending to the image → match/no-match logits (batch, 2)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder = QuestionEncoder(model)
        self.itm_head = model.itm_head

    def forward(self, input_ids, attention_mask, image_embeds):
        return self.itm_head(self.encoder(input_ids, attention_mask, image_embeds)[:, 0])


class ItcImage(nn.Module):
    """Retrieval ITC: image_embeds → normalised projection of the class token (batch, dim)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision_proj = model.vision_proj

    def forward(self, image_embeds):
        return nn.functional.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)


class ItcText(nn.Module):
    """Retrieval ITC: text alone (no cross-attention) → normalised projection of [CLS] (batch, dim)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.text_encoder = model.text_encoder
        self.text_proj = model.text_proj

    def forward(self, input_ids, attention_mask):
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                   return_dict=True).last_hidden_state
        return nn.functional.normalize(self.text_proj(hidden[:, 0]), dim=-1)


# --- specs ------------------------------------------------------------------------------------------

def decoder_dims(model: nn.Module) -> dict[str, int]:
    text = model.config.text_config
    return {"layers": text.num_hidden_layers, "heads": text.num_attention_heads,
            "head_dim": text.hidden_size // text.num_attention_heads}


def graph_specs(source: SourceModel, attentions: bool = False) -> list[GraphSpec]:
    model, task = source.model, source.task
    vision, text = model.config.vision_config, model.config.text_config
    size, width = vision.image_size, vision.hidden_size
    image_tokens = (size // vision.patch_size) ** 2 + 1
    tok = tokenizer_facts(source)
    dims = decoder_dims(model)
    layers, heads, head_dim = dims["layers"], dims["heads"], dims["head_dim"]

    def randn(*shape, generator):
        return torch.randn(*shape, generator=generator)

    def tokens(sizes, generator):
        return token_batch(sizes, generator, high=text.vocab_size - 2, bos_id=tok["cls_id"],
                           eos_id=tok["sep_id"], pad_id=tok["pad_id"])

    image_attn = attention_outputs(vision.num_hidden_layers, vision.num_attention_heads, image_tokens,
                                   image_tokens) if attentions else ()
    specs = [GraphSpec(
        name="image_tower",
        module=BlipImageTower(model, attentions).eval(),
        inputs=(TensorSpec("pixel_values", "float32", ("batch", 3, size, size)),),
        outputs=(TensorSpec("image_embeds", "float32", ("batch", image_tokens, width)), *image_attn),
        sample=lambda s, g: {"pixel_values": randn(s["batch"], 3, size, size, generator=g)},
        trace_sizes={"batch": 2},
        check_sizes=({"batch": 1}, {"batch": 3}),
        gate_sizes=({"batch": 1},),  # stored: 384 x 384 pixels and 577 x 768 outputs are 1.8-2.7 MB on BLIP base
        fusion={"model_type": "vit", "num_heads": vision.num_attention_heads, "hidden_size": width},
        gate={"image_embeds": 0.999},
    )]
    text_fusion = {"model_type": "bert", "num_heads": text.num_attention_heads, "hidden_size": text.hidden_size}
    text_inputs = (TensorSpec("input_ids", "int64", ("batch", "sequence")),
                   TensorSpec("attention_mask", "int64", ("batch", "sequence")))
    image_input = TensorSpec("image_embeds", "float32", ("batch", image_tokens, width))
    text_sizes = dict(trace_sizes={"batch": 2, "sequence": 9},
                      check_sizes=({"batch": 1, "sequence": 4}, {"batch": 3, "sequence": 16}),
                      gate_sizes=({"batch": 2, "sequence": 12},))  # two rows: one of them padded

    def tokens_and_image(sizes, generator):
        feeds = tokens(sizes, generator)
        feeds["image_embeds"] = randn(sizes["batch"], image_tokens, width, generator=generator)
        return feeds

    if task in ("caption", "vqa"):
        decoder = model.text_decoder
        enc_width = text.encoder_hidden_size
        kv_axes = lambda seq: ("batch", heads, seq, head_dim)  # noqa: E731
        past_names = [f"{kind}_{i}" for i in range(layers) for kind in ("past_key", "past_value")]
        cross_names = [f"{kind}_{i}" for i in range(layers) for kind in ("cross_key", "cross_value")]
        present_names = [f"{kind}_{i}" for i in range(layers) for kind in ("present_key", "present_value")]

        def decoder_sample(s, g):
            feeds = {"input_ids": torch.randint(0, text.vocab_size, (s["batch"], s["sequence"]), generator=g)}
            feeds.update({n: randn(s["batch"], heads, s["past_sequence"], head_dim, generator=g) for n in past_names})
            feeds.update({n: randn(s["batch"], heads, s["encoder_sequence"], head_dim, generator=g)
                          for n in cross_names})
            return feeds

        cross_module = CrossKV(decoder).eval()
        question_module = QuestionEncoder(model).eval() if task == "vqa" else None

        def teacher_cross(g):
            """Cross K/V as decoding sees them: the model's own states for two random images (and questions)."""
            with torch.no_grad():
                states = model.vision_model(pixel_values=randn(2, 3, size, size, generator=g)).last_hidden_state
                if task == "caption":
                    states = states[:, :TEACHER_CROSS_TOKENS]  # (2, tokens, width)
                if task == "vqa":
                    feeds = tokens({"batch": 2, "sequence": 8}, g)
                    states = question_module(feeds["input_ids"], feeds["attention_mask"], states)
                return dict(zip(cross_names, cross_module(states)))

        if task == "vqa":
            specs.append(GraphSpec(
                name="question_encoder",
                module=QuestionEncoder(model).eval(),
                inputs=(*text_inputs, image_input),
                outputs=(TensorSpec("question_embeds", "float32", ("batch", "sequence", text.hidden_size)),),
                sample=tokens_and_image, **text_sizes, fusion=text_fusion, gate={"question_embeds": 0.999},
            ))
        specs.append(GraphSpec(
            name="cross_kv",
            module=cross_module,
            inputs=(TensorSpec("encoder_hidden_states", "float32", ("batch", "encoder_sequence", enc_width)),),
            outputs=tuple(TensorSpec(n, "float32", kv_axes("encoder_sequence")) for n in cross_names),
            sample=lambda s, g: {"encoder_hidden_states": randn(s["batch"], s["encoder_sequence"], enc_width,
                                                                generator=g)},
            trace_sizes={"batch": 2, "encoder_sequence": 7},
            check_sizes=({"batch": 1, "encoder_sequence": image_tokens}, {"batch": 3, "encoder_sequence": 5}),
            gate_sizes=({"batch": 1, "encoder_sequence": 9}, {"batch": 2, "encoder_sequence": 4}),
            gate={name: 0.999 for name in cross_names},
        ))
        step_attn = (attention_outputs(layers, heads, "sequence", "total_sequence", "self_attentions")
                     + attention_outputs(layers, heads, "sequence", "encoder_sequence", "cross_attentions")
                     ) if attentions else ()
        specs.append(GraphSpec(
            name="decoder_step",
            module=DecoderStep(decoder, attentions).eval(),
            inputs=(TensorSpec("input_ids", "int64", ("batch", "sequence")),
                    *(TensorSpec(n, "float32", kv_axes("past_sequence")) for n in past_names),
                    *(TensorSpec(n, "float32", kv_axes("encoder_sequence")) for n in cross_names)),
            outputs=(TensorSpec("logits", "float32", ("batch", text.vocab_size)),
                     *(TensorSpec(n, "float32", kv_axes("total_sequence")) for n in present_names), *step_attn),
            sample=decoder_sample,
            trace_sizes={"batch": 2, "sequence": 2, "past_sequence": 3, "encoder_sequence": 5},
            check_sizes=(
                {"batch": 1, "sequence": 1, "past_sequence": 0, "encoder_sequence": image_tokens},
                {"batch": 3, "sequence": 4, "past_sequence": 0, "encoder_sequence": 6},
                {"batch": 2, "sequence": 1, "past_sequence": 9, "encoder_sequence": image_tokens},
            ),
            gate_sizes=({"batch": 1, "sequence": 2, "past_sequence": 3, "encoder_sequence": 5},),
            fusion=text_fusion,
            gate={"logits": 0.99},  # next-token logits, teacher-forced: same tokens and cache on both sides
            teacher=TeacherForcing(bos_id=int(text.bos_token_id), cross=teacher_cross, **TEACHER_GATE),
            weight_bound=True,  # batch 1 streams every weight per token: --precision int4 gives it 4-bit weights
        ))
    elif task == "itm":
        specs.append(GraphSpec(
            name="itm_head", module=ItmHead(model).eval(),
            inputs=(*text_inputs, image_input),
            outputs=(TensorSpec("itm_logits", "float32", ("batch", 2)),),
            sample=tokens_and_image, **text_sizes, fusion=text_fusion, gate={"itm_logits": 0.99},
        ))
        dim = model.config.image_text_hidden_size
        specs.append(GraphSpec(
            name="itc_image", module=ItcImage(model).eval(),
            inputs=(image_input,),
            outputs=(TensorSpec("image_feat", "float32", ("batch", dim)),),
            sample=lambda s, g: {"image_embeds": randn(s["batch"], image_tokens, width, generator=g)},
            trace_sizes={"batch": 2}, check_sizes=({"batch": 1}, {"batch": 3}), gate_sizes=({"batch": 1},),
            gate={"image_feat": 0.999},
        ))
        specs.append(GraphSpec(
            name="itc_text", module=ItcText(model).eval(),
            inputs=text_inputs,
            outputs=(TensorSpec("text_feat", "float32", ("batch", dim)),),
            sample=tokens, **text_sizes, fusion=text_fusion, gate={"text_feat": 0.999},
        ))
    return specs


def tokenizer_facts(source: SourceModel) -> dict[str, Any]:
    tok, text = source.tokenizer, source.model.config.text_config
    return {
        "file": "tokenizer.json",
        "max_length": min(int(tok.model_max_length or 10**9), int(text.max_position_embeddings)),
        "cls_id": int(tok.cls_token_id),
        "sep_id": int(tok.sep_token_id),
        "pad_id": int(tok.pad_token_id),
    }


def manifest_sections(source: SourceModel) -> dict[str, Any]:
    model, task = source.model, source.task
    text, vision = model.config.text_config, model.config.vision_config
    facts: dict[str, Any] = {
        "task": task,
        "image_tokens": (vision.image_size // vision.patch_size) ** 2 + 1,
        "image_size": int(vision.image_size),
        "patch_grid": [vision.image_size // vision.patch_size] * 2,  # image tokens = 1 (class) + grid
    }
    tasks = families.family(FAMILY).tasks_of(task)
    if task in ("caption", "vqa"):
        facts["decoder"] = decoder_dims(model)
        facts["generation"] = {
            "bos_id": int(text.bos_token_id),  # [DEC], the first decoder token
            "eos_id": int(text.sep_token_id),  # [SEP] ends a row
            "pad_id": int(text.pad_token_id),  # fills finished rows
            "max_positions": int(text.max_position_embeddings),
            "default_max_new_tokens": tasks[0].max_new_tokens,
            "prompt_layout": "[DEC] + prompt tokens ([CLS] replaced by [DEC], trailing [SEP] dropped)"
            if task == "caption" else "[DEC]; the decoder cross-attends to the question encoding",
            "config": generation_defaults(model),
        }
    return {
        "tasks": [t.name for t in tasks],
        "image": image_facts(source.image_processor, vision.image_size),
        "tokenizer": tokenizer_facts(source),
        "model": facts,
    }


# the decoding settings of a checkpoint's generation_config.json that the engine takes as its defaults
# (transformers' lengths that count the prompt, and every decoding option a config may set)
GENERATION_KEYS = ("max_length", "min_length", *(name for name, rule in option_rules().items() if rule.in_config))


def generation_defaults(model) -> dict[str, Any]:
    """The checkpoint's own decoding settings (those it sets; transformers' defaults are left out).
    ``max_length`` / ``min_length`` count the decoder's prompt too, as transformers counts them."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return {}
    return {key: value for key, value in config.to_diff_dict().items() if key in GENERATION_KEYS and value is not None}


# --- loading ----------------------------------------------------------------------------------------

def load_pretrained(ref: str, task: str | None, architectures: list[str] | None, local_only: bool,
                    allow_pickle: bool = False) -> SourceModel:
    """A BLIP checkpoint; its task is --task if given (it must agree with the checkpoint), else the architecture's."""
    return checkpoint.load_pretrained(FAMILY, ref, task, architectures, local_only, allow_pickle)


def build_random(preset: families.Preset, task: str | None = None) -> SourceModel:
    """A seeded random BLIP of the preset's architecture for ``task`` (default: the preset's)."""
    import transformers
    from transformers import BlipConfig, BlipImageProcessorPil

    task = checkpoint.resolve_task(FAMILY, None, task or preset.default_task,
                                   families.RANDOM_PREFIX + preset.name)
    torch.manual_seed(0)
    config = BlipConfig(**copy.deepcopy(preset.config))
    # BLIP's vision default initialiser (std 1e-10) makes a random tower blind to the image.
    config.vision_config.initializer_range = 0.02
    model_class = getattr(transformers, families.family(FAMILY).model_class(task))
    model = model_class._from_config(config, attn_implementation="eager").eval()
    size = config.vision_config.image_size
    processor = BlipImageProcessorPil(size={"height": size, "width": size})
    tokenizer = blip_tokenizer(config.text_config.max_position_embeddings)
    return checkpoint.random_source(FAMILY, preset, task, model, processor, tokenizer)
