"""Figures from engine outputs (matplotlib only; never torch). Every function returns a Figure."""

from .attention import (
    attention_rollout,
    class_token_map,
    cross_attention_figure,
    image_attention_figure,
    token_attention_figure,
)
from . import report
from .gallery import caption_gallery, topk_bars, vqa_gallery
from .similarity import match_heatmaps, similarity_heatmap
from .style import RANDOM_WEIGHTS_NOTE, cjk_font, display_label, setup_fonts
from .toy import TOY_TOKENS, toy_attention, toy_attention_figure

__all__ = [
    "RANDOM_WEIGHTS_NOTE",
    "TOY_TOKENS",
    "attention_rollout",
    "caption_gallery",
    "cjk_font",
    "class_token_map",
    "cross_attention_figure",
    "display_label",
    "image_attention_figure",
    "match_heatmaps",
    "report",
    "setup_fonts",
    "similarity_heatmap",
    "token_attention_figure",
    "topk_bars",
    "toy_attention",
    "toy_attention_figure",
    "vqa_gallery",
]
