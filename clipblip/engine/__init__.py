"""Run exported model folders with ONNX Runtime, numpy, pillow and tokenizers only (never torch)."""

from .clip import ClipEngine
from .images import ImagePreprocessor, load_image
from .session import resolve_providers
from .text import TextTokenizer

__all__ = ["ClipEngine", "ImagePreprocessor", "TextTokenizer", "load_image", "resolve_providers"]
