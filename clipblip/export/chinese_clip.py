"""Chinese-CLIP: CLIP's towers with a BERT-Chinese text tower pooled at [CLS]; everything else is CLIP's."""

from __future__ import annotations

import copy

import torch

from .. import families
from . import checkpoint
from .checkpoint import SourceModel
# the manifest sections and facts are CLIP's
from .clip import ClipImageTower, ClipTextTower, manifest_sections, model_facts, tower_specs  # noqa: F401
from .specs import GraphSpec
from .vocab import chinese_bert_tokenizer

__all__ = ["ChineseClipTextTower", "graph_specs", "manifest_sections", "model_facts", "load_pretrained",
           "build_random"]

FAMILY = "chinese_clip"
CONTEXT_LENGTH = 52  # cn_clip's text context (its checkpoints' position table is longer: 512)


class ChineseClipTextTower(ClipTextTower):
    """input_ids, attention_mask → projected embedding of [CLS] [, attention weights].

    A single text has token type 0 everywhere, which BERT's embeddings use when none are given.
    """

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=self.attentions)
        embeds = self.text_projection(out.last_hidden_state[:, 0, :])  # (batch, seq, hidden) → (batch, embed_dim)
        return (embeds, *out.attentions) if self.attentions else embeds


def graph_specs(source: SourceModel, attentions: bool = False) -> list[GraphSpec]:
    # BERT's ids are ordinary below the vocabulary size; fused as BERT ("bert" patterns) for the text side
    return tower_specs(source, manifest_sections(source), ClipImageTower(source.model, attentions),
                       ChineseClipTextTower(source.model, attentions), attentions, fusion_types=("clip", "bert"))


def load_pretrained(ref: str, task: str | None, architectures: list[str] | None, local_only: bool,
                    allow_pickle: bool = False) -> SourceModel:
    return checkpoint.load_pretrained(FAMILY, ref, task, architectures, local_only, allow_pickle)


def build_random(preset: families.Preset, task: str | None = None) -> SourceModel:
    """A seeded random Chinese-CLIP of the preset's architecture, with its image processor and the real
    BERT-Chinese vocabulary (21,128 WordPiece entries; Chinese characters split one by one)."""
    from transformers import ChineseCLIPConfig, ChineseCLIPImageProcessorPil, ChineseCLIPModel

    checkpoint.resolve_task(FAMILY, None, task, families.RANDOM_PREFIX + preset.name)  # refuses a --task
    torch.manual_seed(0)
    config = ChineseCLIPConfig(**copy.deepcopy(preset.config))
    model = ChineseCLIPModel._from_config(config, attn_implementation="eager").eval()
    size = config.vision_config.image_size
    processor = ChineseCLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    tokenizer = chinese_bert_tokenizer(min(CONTEXT_LENGTH, config.text_config.max_position_embeddings))
    return checkpoint.random_source(FAMILY, preset, None, model, processor, tokenizer)
