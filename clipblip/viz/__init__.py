"""Figures from engine outputs (matplotlib only; never torch)."""

from .similarity import match_heatmaps, similarity_heatmap

__all__ = ["match_heatmaps", "similarity_heatmap", "RANDOM_WEIGHTS_NOTE"]

RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS: shows the pipeline, not what a trained model sees"
