"""One error hierarchy for every stage; each class carries its CLI exit code."""

from __future__ import annotations

__all__ = [
    "ClipblipError",
    "UsageError",
    "ModelSourceError",
    "ExportError",
    "ParityError",
    "OutputError",
    "OutputExistsError",
    "MissingExtraError",
    "WrongModelError",
    "ModelLoadError",
    "ProviderError",
    "ImageError",
    "TextInputError",
    "GenerationConfigError",
    "UnsafeArtifactError",
    "CompatibilityError",
    "ImageTooLargeError",
    "NumericalError",
    "PartialFailure",
    "DatabaseError",
    "AccuracyError",
    "RayClusterError",
    "raise_item_errors",
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


class MissingExtraError(UsageError):
    """A command needs an optional part of clipblip (an extra such as ``export`` or ``viz``) that is not installed."""


class WrongModelError(UsageError):
    """A model folder of another family or task than the one asked for; the message says what to export."""


class OutputError(ClipblipError):
    """An output path that cannot be written: it exists without --force, it is not something clipblip
    wrote (never replaced, even with --force), or its folder cannot hold it."""

    exit_code = 6


class OutputExistsError(OutputError):
    """An output path exists and --force was not given."""


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


class UnsafeArtifactError(ModelLoadError):
    """A graph or its external data that would make ONNX Runtime read outside the model folder."""

    exit_code = 12


class CompatibilityError(ModelLoadError):
    """A graph needs a newer ONNX Runtime (IR version or opset) than the one installed."""

    exit_code = 13


class ImageTooLargeError(ImageError):
    """An image whose pixel count passes the limit; refused before decoding."""

    exit_code = 14


class NumericalError(ClipblipError):
    """NaN or Inf in an embedding or in next-token logits."""

    exit_code = 15


class PartialFailure(ClipblipError):
    """Some items of a batch failed; the others have results.

    ``results`` holds the call's result with NaN rows or None where an item failed; ``errors``
    maps each failed item's index to its own error.
    """

    exit_code = 16

    def __init__(self, message: str, results=None, errors: dict | None = None):
        super().__init__(message)
        self.results = results
        self.errors = dict(errors or {})


class AccuracyError(ModelLoadError):
    """A graph that fails its stored check on this machine, provider or runtime: refused, never run."""

    exit_code = 18


class DatabaseError(ClipblipError):
    """A search database (`clipblip index --db`) that is missing, damaged, not clipblip's, or built with
    another model than the one given."""

    exit_code = 17


class RayClusterError(ClipblipError):
    """The Ray cluster to join (``--ray-address``, RAY_ADDRESS) does not answer, or refuses this process:
    it requires token authentication and no token, or another one, is set here."""

    exit_code = 19


def raise_item_errors(errors: dict[int, ClipblipError], count: int, results) -> None:
    """Nothing if no item failed; the item's own error for a single item; else PartialFailure."""
    if not errors:
        return
    if count == 1:
        raise errors[0]
    first = min(errors)
    raise PartialFailure(f"{len(errors)} of {count} items failed (first, item {first}: {errors[first]})",
                         results=results, errors=errors)


EXIT_CODES = {cls.__name__: cls.exit_code for cls in (
    ClipblipError, UsageError, MissingExtraError, WrongModelError, ModelSourceError, ExportError, ParityError,
    OutputError, OutputExistsError,
    ModelLoadError, ProviderError, ImageError, TextInputError, GenerationConfigError, UnsafeArtifactError,
    CompatibilityError, ImageTooLargeError, NumericalError, PartialFailure, DatabaseError, AccuracyError,
    RayClusterError,
)}
