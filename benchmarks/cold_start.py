"""One cold start, run by benchmarks/run.py in a fresh process: imports, load, first caption.

    python benchmarks/cold_start.py eager|clipblip MODEL_DIR PHOTO THREADS [PROVIDER]

Prints one JSON line: seconds to the first caption (measured inside) and the peak resident memory.
"""

import json
import sys
import time
from pathlib import Path

start = time.perf_counter()
kind, model_dir, photo, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
provider = sys.argv[5] if len(sys.argv) > 5 else "cpu"

if kind == "eager":
    from clipblip import torchvision_cpu  # stdlib only: torchvision importable beside the CPU torch

    torchvision_cpu.install()
    import torch
    from PIL import Image
    from transformers import BlipForConditionalGeneration, BlipImageProcessorPil

    torch.set_num_threads(threads)
    model = BlipForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = BlipImageProcessorPil.from_pretrained(model_dir)
    with torch.inference_mode():
        pixels = processor(images=[Image.open(photo).convert("RGB")], return_tensors="pt")["pixel_values"]
        model.generate(pixel_values=pixels, max_new_tokens=20, num_beams=1, do_sample=False)
else:
    from clipblip.engine import BlipEngine

    BlipEngine.from_dir(model_dir, provider=provider, threads=threads).caption([photo], max_new_tokens=20)

# VmHWM: this process's own peak resident set (ru_maxrss would carry the parent's across fork + exec)
status = Path("/proc/self/status").read_text().splitlines()
peak_mb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
print(json.dumps({"first_caption_s": time.perf_counter() - start, "peak_rss_mb": peak_mb}))
