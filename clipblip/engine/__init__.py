"""Run exported model folders with ONNX Runtime, numpy, pillow and tokenizers only (never torch)."""

from .blip import BlipEngine, CaptionAttention, MatchScores
from .clip import ChineseClipEngine, ClipEngine, OpenClipEngine, SiglipEngine
from .generate import Generation, GenerationOptions
from .images import ImagePreprocessor, load_image
from .session import resolve_providers
from .text import TextTokenizer

__all__ = ["BlipEngine", "CaptionAttention", "ChineseClipEngine", "ClipEngine", "OpenClipEngine", "SiglipEngine", "Generation",
           "GenerationOptions", "MatchScores", "ImagePreprocessor", "TextTokenizer", "load_image", "resolve_providers"]
