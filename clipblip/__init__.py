"""clipblip: export CLIP and BLIP to ONNX once, run them with ONNX Runtime alone.

Subpackages: ``clipblip.export`` (needs torch), ``clipblip.engine`` (torch-free), ``clipblip.viz``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
