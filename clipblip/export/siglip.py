"""SigLIP: an attention-pooled image tower, a text tower pooled at the last position, sigmoid scoring.

Texts are padded to the checkpoint's max length (64), as its processor does and the model was
trained; the tokenizer becomes a ``tokenizers`` one here, so the engine never needs SentencePiece:
SigLIP's own (SentencePiece, ``SiglipTokenizer``) by :func:`fast_tokenizer`, SigLIP 2's byte-fallback
BPE (a fast tokenizer already) as it is.
"""

from __future__ import annotations

import copy
import re
import string
import tempfile
from typing import Any

import torch
from torch import nn

from .. import families
from . import checkpoint
from .checkpoint import SourceModel
from .clip import dual_encoder_sections, tokenizer_facts, tower_facts, tower_specs
from .specs import GraphSpec
from .vocab import siglip_tokenizer

__all__ = ["SiglipImageTower", "SiglipTextTower", "fast_tokenizer", "graph_specs", "manifest_sections",
           "model_facts", "load_pretrained", "build_random"]

FAMILY = "siglip"


class SiglipImageTower(nn.Module):
    """pixel_values → the attention-pooling head's embedding (not normalised) [, each layer's attention]."""

    def __init__(self, model: nn.Module, attentions: bool = False):
        super().__init__()
        self.vision_model = model.vision_model
        self.attentions = attentions

    def forward(self, pixel_values: torch.Tensor):
        out = self.vision_model(pixel_values=pixel_values, output_attentions=self.attentions)
        return (out.pooler_output, *out.attentions) if self.attentions else out.pooler_output  # (batch, hidden)


class SiglipTextTower(nn.Module):
    """input_ids, attention_mask → the text head's embedding of the last position [, attention weights]."""

    def __init__(self, model: nn.Module, attentions: bool = False):
        super().__init__()
        self.text_model = model.text_model
        self.attentions = attentions

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=self.attentions)
        return (out.pooler_output, *out.attentions) if self.attentions else out.pooler_output  # (batch, hidden)


def graph_specs(source: SourceModel, attentions: bool = False) -> list[GraphSpec]:
    return tower_specs(source, manifest_sections(source), SiglipImageTower(source.model, attentions),
                       SiglipTextTower(source.model, attentions), attentions, fusion_types=("clip", "bert"))


def model_facts(source: SourceModel) -> dict[str, Any]:
    model = source.model  # no class token: a learnt probe pools the patches
    return {**tower_facts(model, embed_dim=model.config.vision_config.hidden_size, class_token=False),
            "logit_bias": float(model.logit_bias.detach())}


def manifest_sections(source: SourceModel) -> dict[str, Any]:
    return dual_encoder_sections(source, tokenizer_facts(source, padding="max_length"), model_facts(source))


def fast_tokenizer(slow) -> Any:
    """A ``tokenizers`` Tokenizer that encodes as ``SiglipTokenizer`` does: its text canonicalisation
    (lower case, ASCII punctuation removed, whitespace runs made one space, stripped), SentencePiece's
    normalisation and word-initial "▁", the unigram pieces, then </s>. A text's own "▁" counts as a space,
    and only its start gets the "▁" (not text after a special token), as there."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers.convert_slow_tokenizer import import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(slow.sp_model.serialized_model_proto())
    tokenizer = Tokenizer(Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=proto.trainer_spec.unk_id,
                                  byte_fallback=proto.trainer_spec.byte_fallback))
    steps = [normalizers.Replace("▁", " ")] + ([normalizers.Lowercase()] if slow.do_lower_case else [])
    steps += [normalizers.Replace(Regex("[" + re.escape(string.punctuation) + "]"), ""),
              normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(left=False, right=True)]
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tokenizer.add_special_tokens([AddedToken(str(t), special=True, normalized=False, lstrip=True, rstrip=True)
                                  for t in dict.fromkeys((slow.pad_token, slow.eos_token, slow.unk_token))])
    eos = str(slow.eos_token)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, slow.eos_token_id)])
    return tokenizer


def load_pretrained(ref: str, task: str | None, architectures: list[str] | None, local_only: bool,
                    allow_pickle: bool = False) -> SourceModel:
    """A SigLIP checkpoint: SigLIP's SentencePiece tokenizer converted, SigLIP 2's (a fast one) as it is."""
    return checkpoint.load_pretrained(FAMILY, ref, task, architectures, local_only, allow_pickle,
                                      to_fast=fast_tokenizer)


def build_random(preset: families.Preset, task: str | None = None) -> SourceModel:
    """A seeded random SigLIP of the preset's architecture, with SigLIP's image processor and a
    SentencePiece tokenizer of the same kind (see :func:`clipblip.export.vocab.siglip_tokenizer`)."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    checkpoint.resolve_task(FAMILY, None, task, families.RANDOM_PREFIX + preset.name)  # refuses a --task
    torch.manual_seed(0)
    config = SiglipConfig(**copy.deepcopy(preset.config))
    model = SiglipModel._from_config(config, attn_implementation="eager").eval()
    size = config.vision_config.image_size
    processor = SiglipImageProcessorPil(size={"height": size, "width": size})
    text = config.text_config
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = siglip_tokenizer(text.vocab_size, text.max_position_embeddings, folder)
        tokenizer.sp_model  # loaded: the file may go
    return checkpoint.random_source(FAMILY, preset, None, model, processor, tokenizer, fast_tokenizer(tokenizer))
