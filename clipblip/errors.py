"""One error hierarchy for every stage; each class carries its CLI exit code."""

from __future__ import annotations

__all__ = [
    "ClipblipError",
    "UsageError",
    "ModelSourceError",
    "ExportError",
    "ParityError",
    "OutputExistsError",
    "ModelLoadError",
    "ProviderError",
    "ImageError",
    "TextInputError",
    "GenerationConfigError",
    "EXIT_CODES",
]


class ClipblipError(Exception):
    """Base class: a one-line message that names the input at fault."""

    exit_code = 1


class UsageError(ClipblipError):
    """A command-line argument or API argument that cannot be used."""

    exit_code = 2


class ModelSourceError(ClipblipError):
    """The MODEL given to export cannot be found or loaded."""

    exit_code = 3


class ExportError(ClipblipError):
    """Tracing or writing a graph failed."""

    exit_code = 4


class ParityError(ExportError):
    """An exported graph does not match the PyTorch model within tolerance."""

    exit_code = 5


class OutputExistsError(ClipblipError):
    """An output path exists and --force was not given."""

    exit_code = 6


class ModelLoadError(ClipblipError):
    """A model folder is missing, damaged or inconsistent with its manifest."""

    exit_code = 7


class ProviderError(ClipblipError):
    """The requested ONNX Runtime execution provider is not usable."""

    exit_code = 8


class ImageError(ClipblipError):
    """An image cannot be read or decoded."""

    exit_code = 9


class TextInputError(ClipblipError):
    """A text input is not usable."""

    exit_code = 10


class GenerationConfigError(ClipblipError):
    """Decoding settings (max_new_tokens, prompt length) are out of range."""

    exit_code = 11


EXIT_CODES = {cls.__name__: cls.exit_code for cls in (
    ClipblipError, UsageError, ModelSourceError, ExportError, ParityError, OutputExistsError,
    ModelLoadError, ProviderError, ImageError, TextInputError, GenerationConfigError,
)}
