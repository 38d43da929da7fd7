"""Defaults shared by the engine and the command line (stdlib only, so the CLI parser stays light)."""

__all__ = ["PROVIDER_CHOICES", "MAX_BATCH", "MAX_IMAGE_PIXELS"]

# "auto": CUDA when usable, else CPU, with OpenVINO for the graphs it runs faster on a CPU with AMX;
# "openvino": OpenVINO for every graph the folder holds for it, ONNX Runtime's CPU provider for the rest
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "openvino")
MAX_BATCH = 16  # the largest batch one graph run takes
MAX_IMAGE_PIXELS = 64_000_000  # images with more pixels are refused before decoding (decompression bombs)
