"""optimum-onnx's side of benchmarks/peers/classify.py; runs under .venv-peers/bin/python, never ours.

    .venv-peers/bin/python benchmarks/peers/optimum_worker.py --checkpoint CKPT --workdir DIR \
        --photo PHOTO --threads 2 [--per-channel] [--recipe avx2|avx512|avx512_vnni|arm64]

Exports CKPT (a save_pretrained CLIP folder) with optimum-onnx as one graph
(`ORTModelForZeroShotImageClassification.from_pretrained(CKPT, export=True)`), makes an int8 copy with
optimum's own dynamic quantization (`ORTQuantizer` + `AutoQuantizationConfig.<recipe>(is_static=False,
per_channel=False)` by default: the recipe of optimum's quickstart and of `optimum-cli onnxruntime
quantize --avx512_vnni`, whose --per_channel is off unless given), loads both on the CPU provider with
intra_op_num_threads=THREADS and inter_op_num_threads=1, then answers requests, one JSON object a line:

    {"op": "run", "variant": "fp32" | "int8", "prompts": [...]}  ->  {"ms": ..., "probs": [...]}
    {"op": "quit"}

Each "run" times itself (time.perf_counter) around what a user of optimum does for zero-shot
classification: processor(text=prompts, images=photo, padding=True, return_tensors="np") -> model(**inputs)
-> softmax of logits_per_image. The first line written is {"ready": true, "info": {...}} (versions,
recipe, files) or {"ready": false, "error": "..."}. Everything else (warnings, progress) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

# The protocol owns the real stdout; anything printed by a library (or by C code) goes to stderr.
PROTOCOL = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
os.dup2(2, 1)
sys.stdout = sys.stderr


def send(obj: dict) -> None:
    PROTOCOL.write(json.dumps(obj) + "\n")
    PROTOCOL.flush()


def session_options(threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def setup(args) -> tuple[dict, dict]:
    import numpy as np
    import onnxruntime
    import optimum.version
    import torch
    import transformers
    from importlib.metadata import version
    from optimum.onnxruntime import ORTModelForZeroShotImageClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from PIL import Image
    from transformers import AutoProcessor

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    fp32_dir, int8_dir = workdir / "optimum-fp32", workdir / "optimum-int8"
    provider = "CPUExecutionProvider"

    start = time.perf_counter()
    exported = ORTModelForZeroShotImageClassification.from_pretrained(args.checkpoint, export=True, provider=provider,
                                                                      session_options=session_options(args.threads))
    exported.save_pretrained(fp32_dir)
    export_s = time.perf_counter() - start

    start = time.perf_counter()
    # optimum's recipe for the CPU at hand (classify.py passes it from clipblip's CPUID reading)
    qconfig = getattr(AutoQuantizationConfig, args.recipe)(is_static=False, per_channel=args.per_channel)
    quantizer = ORTQuantizer.from_pretrained(fp32_dir)
    quantizer.quantize(quantization_config=qconfig, save_dir=int8_dir)  # returns the folder, not the file
    (quantized_file,) = int8_dir.glob("*.onnx")  # model_quantized.onnx
    quantize_s = time.perf_counter() - start
    del exported, quantizer

    models = {
        "fp32": ORTModelForZeroShotImageClassification.from_pretrained(
            fp32_dir, provider=provider, session_options=session_options(args.threads)),
        "int8": ORTModelForZeroShotImageClassification.from_pretrained(
            int8_dir, file_name=Path(quantized_file).name, provider=provider,
            session_options=session_options(args.threads)),
    }
    processor = AutoProcessor.from_pretrained(args.checkpoint)
    photo = Image.open(args.photo).convert("RGB")
    photo.load()

    def run(variant: str, prompts: list[str]) -> dict:
        model = models[variant]
        start = time.perf_counter()
        inputs = processor(text=prompts, images=photo, padding=True, return_tensors="np")
        logits = model(**inputs).logits_per_image  # (1 image, len(prompts)), numpy for numpy inputs
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = shifted / shifted.sum(axis=-1, keepdims=True)
        ms = (time.perf_counter() - start) * 1000
        return {"ms": ms, "probs": [float(p) for p in probs[0]]}

    files = {name: {"file": str(path.relative_to(workdir)), "mb": round(path.stat().st_size / 2**20, 1)}
             for name, path in (("fp32", fp32_dir / "model.onnx"), ("int8", Path(quantized_file)))}
    recipe = {k: (v.name if hasattr(v, "name") else v) for k, v in qconfig.__dict__.items()
              if k in ("is_static", "format", "mode", "activations_dtype", "activations_symmetric", "weights_dtype",
                       "weights_symmetric", "per_channel", "reduce_range", "operators_to_quantize")}
    info = {
        "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__, "optimum": optimum.version.__version__,
        "optimum-onnx": version("optimum-onnx"), "onnx": version("onnx"),
        "model_class": "ORTModelForZeroShotImageClassification (one graph: both towers + logits)",
        "quantization": {"call": f"AutoQuantizationConfig.{args.recipe}(is_static=False, "
                                 f"per_channel={args.per_channel})", **recipe},
        "providers": {name: model.providers for name, model in models.items()},
        "use_io_binding": {name: model.use_io_binding for name, model in models.items()},
        "processor": f"{type(processor).__name__}: {type(processor.image_processor).__name__} + "
                     f"{type(processor.tokenizer).__name__} (AutoProcessor defaults)",
        "files": files, "export_s": round(export_s, 1), "quantize_s": round(quantize_s, 1),
    }
    return info, {"run": run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--photo", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-channel", action="store_true",
                        help="per-channel int8 weights (optimum's default recipe is per-tensor)")
    parser.add_argument("--recipe", default="avx512_vnni", choices=["avx2", "avx512", "avx512_vnni", "arm64"],
                        help="optimum's AutoQuantizationConfig for this CPU (default avx512_vnni)")
    args = parser.parse_args()
    try:
        info, handlers = setup(args)
    except Exception as e:  # noqa: BLE001 - reported to the driver, which stops with it
        traceback.print_exc()
        send({"ready": False, "error": f"{type(e).__name__}: {e}"})
        return
    send({"ready": True, "info": info})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("op") == "quit":
            break
        try:
            send(handlers["run"](request["variant"], request["prompts"]))
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            send({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
