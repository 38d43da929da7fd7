"""clipblip on an NVIDIA GPU (CUDAExecutionProvider) against PyTorch eager fp32 and fp16, in one process.

    python benchmarks/gpu.py --out DIR [--budget 500] [--models DIR]   (benchmarks/gpu.sh sets it up and runs it)
    python benchmarks/gpu.py --probe [--no-cuda]                       check the environment only
    python benchmarks/gpu.py --device cpu --size tiny --out DIR        the same flow on the CPU with the tiny
                                                                       presets: checks the harness, measures nothing

Stages, each written to results.json / results.md as soon as it is done, within --budget seconds:
1. export random:clip-base and random:blip-base (caption) in fp32 and fp16, four processes at once (the
   fp16 export gates its graphs against fp32 on CUDA when ONNX Runtime has it; a graph that fails stays fp32);
2. checks: fp32 parity with PyTorch on the GPU (TF32 off on both sides: CLIP embeddings within 1e-4, the
   same greedy tokens for BLIP), the fp16 gates passed on CUDAExecutionProvider (from the manifests), the
   greedy decoder's argmax taken on the device (only token ids come back) with the host path's tokens;
3. timings, interleaved rounds after warm-up, medians, the same inputs: CLIP image embedding batch 1 from a
   PIL image (and the image tower alone on preprocessed pixels), and a BLIP caption of 20 new tokens, for
   eager fp32, eager fp16 (model.half()), clipblip fp32 and fp16 on provider "cuda";
4. goals: CLIP image bs1 fp16 >= 3x eager fp32 and >= 1.5x eager fp16; caption fp16 >= 3x eager fp16.
Random-weight presets have the real architectures: honest about speed, never about quality.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

# benchmarks/common.py; it puts this checkout first on sys.path (clipblip is run from it, installed or not)
from common import (PHOTOS, cell, commit_text, describe, environment as environment_record, interleaved, machine_text,
                    sample_image, summarise, table, write_results)

PRESETS = {"clip": ("clip", None), "caption": ("blip", "caption")}  # name: (preset family, task)
PRECISIONS = ("fp32", "fp16")
NEW_TOKENS = 20
CLIP_TOL = 1e-4
GOALS = (  # (workload, variant, baseline, at least)
    ("CLIP image embedding, batch 1", "clipblip fp16", "eager fp32", 3.0),
    ("CLIP image embedding, batch 1", "clipblip fp16", "eager fp16", 1.5),
    (f"BLIP caption, {NEW_TOKENS} new tokens", "clipblip fp16", "eager fp16", 3.0),
)
RATIOS = {"ratio_to_eager_fp32": "eager fp32", "ratio_to_eager_fp16": "eager fp16"}  # every timing's, in one run
NEEDED = ("numpy", "PIL", "torch", "transformers", "tokenizers", "onnx", "onnxruntime", "safetensors")


def log(message: str) -> None:
    print(f"gpu.py: {message}", flush=True)


# --- the environment ------------------------------------------------------------------------------------


def cuda_session_error() -> str | None:
    """None when a session on CUDAExecutionProvider really runs (the shipped argmax graph), else why not."""
    import numpy as np
    import onnxruntime as ort

    from clipblip.engine.decoder import ARGMAX_ROWS

    try:
        session = ort.InferenceSession(str(ARGMAX_ROWS), providers=["CUDAExecutionProvider"])
        if session.get_providers()[0] != "CUDAExecutionProvider":
            return f"ONNX Runtime fell back to {session.get_providers()[0]} (the CUDA provider did not load)"
        ids = session.run(["ids"], {"logits": np.array([[0.0, 2.0, 2.0, 1.0]], np.float32)})[0]
        return None if ids.tolist() == [1] else f"the argmax graph on CUDA gave {ids.tolist()}, not [1]"
    except Exception as e:  # ORT's own exception types
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"


def load_cuda_libraries() -> str:
    """Make the CUDA provider loadable: PyTorch's CUDA libraries first (import torch, start CUDA), else
    onnxruntime.preload_dlls() from the nvidia-* packages. Returns how, or raises RuntimeError."""
    import torch

    if torch.cuda.is_available():
        torch.zeros(1, device="cuda")
    import onnxruntime as ort

    error = cuda_session_error()
    if error is None:
        return "CUDA libraries as loaded by torch"
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as e:  # best effort; the check below says whether it helped
            log(f"onnxruntime.preload_dlls(): {e}")
        if cuda_session_error() is None:
            return "CUDA libraries from onnxruntime.preload_dlls()"
    raise RuntimeError(f"CUDAExecutionProvider does not run here: {error}")


def probe(cuda: bool) -> int:
    """The environment gpu.sh built: every module, one ONNX Runtime distribution (onnxruntime-gpu), CUDA."""
    problems = [f"module {name} is missing" for name in NEEDED if importlib.util.find_spec(name) is None]
    if problems:
        log("; ".join(problems))
        return 1
    import torch  # before onnxruntime: its CUDA libraries serve ONNX Runtime's CUDA provider
    import onnxruntime as ort
    import transformers

    from clipblip.engine.session import installed_runtimes

    runtimes = installed_runtimes()
    log(f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__} (CUDA "
        f"{torch.version.cuda}); transformers {transformers.__version__}; onnxruntime {ort.__version__} from "
        f"{Path(ort.__file__).parent}; distributions: {', '.join(runtimes) or 'none'}; providers: "
        f"{', '.join(ort.get_available_providers())}")
    if len(runtimes) != 1 or not runtimes[0].startswith("onnxruntime-gpu "):
        problems.append(f"ONNX Runtime distributions visible: {runtimes or 'none'}; want onnxruntime-gpu alone")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        problems.append("this onnxruntime has no CUDAExecutionProvider")
    if cuda and not problems:
        if not torch.cuda.is_available():
            problems.append("torch sees no CUDA device")
        else:
            try:
                log(f"CUDA sessions run ({load_cuda_libraries()}) on {torch.cuda.get_device_name(0)}")
            except RuntimeError as e:
                problems.append(str(e))
    for problem in problems:
        log(f"problem: {problem}")
    return 1 if problems else 0


def environment(device: str) -> dict:
    import torch

    from clipblip.engine.session import installed_runtimes

    env = environment_record(
        torch.get_num_threads(), "torch", "transformers", "onnx", "onnxruntime", device=device,
        torch_cuda=torch.version.cuda, onnxruntime_distributions=installed_runtimes(),
        tf32="PyTorch defaults for timings (matmul TF32 off, cuDNN TF32 on), both off for parity; "
             "ONNX Runtime CUDA provider defaults (clipblip passes no provider options)")
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        try:
            query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                    "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            env["nvidia_smi"] = query.stdout.strip().splitlines()[0]
            header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
            env["driver_cuda"] = next((line.split("CUDA Version:")[1].strip(" |") for line in header.splitlines()
                                       if "CUDA Version:" in line), "unknown")
        except (OSError, subprocess.SubprocessError, IndexError) as e:
            env["nvidia_smi"] = f"unavailable: {e}"
    else:
        env["gpu"] = "none: the CPU harness check (--device cpu); no GPU figure was measured"
    return env


# --- exports --------------------------------------------------------------------------------------------


def export_one(source: str, task: str, precision: str, folder: Path, threads: int) -> None:
    """One export, in its own process (gpu.py --export-one)."""
    import torch

    torch.set_num_threads(threads)
    if precision == "fp16" and torch.cuda.is_available():
        log(f"{folder.name}: {load_cuda_libraries()} (the fp16 gate runs on CUDA)")
    from clipblip.export import export_model

    export_model(source, folder, task=task or None, precision=precision, force=folder.exists(),
                 progress=lambda message: print(f"[{folder.name}] {message}", flush=True))


def reusable(folder: Path, precision: str) -> bool:
    from clipblip.errors import ClipblipError
    from clipblip.manifest import Manifest

    try:
        return Manifest.load(folder).source.get("precision") == precision
    except ClipblipError:
        return False


def export_all(models: Path, size: str, deadline: float) -> tuple[dict[str, Path], dict[str, str]]:
    """Folders per "name precision", exported in parallel (existing complete exports are reused)."""
    folders, jobs, status = {}, {}, {}
    threads = max(1, (os.cpu_count() or 4) // 4)
    models.mkdir(parents=True, exist_ok=True)
    for name, (family, task) in PRESETS.items():
        for precision in PRECISIONS:
            key, folder = f"{name} {precision}", models / f"{name}-{size}-{precision}"
            folders[key] = folder
            if reusable(folder, precision):
                status[key] = "reused"
                continue
            command = [sys.executable, str(Path(__file__).resolve()), "--export-one", f"random:{family}-{size}",
                       task or "", precision, str(folder), "--threads", str(threads)]
            jobs[key] = (subprocess.Popen(command), time.monotonic())
    for key, (process, started) in jobs.items():
        try:
            code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            status[key] = f"exported in {time.monotonic() - started:.0f} s" if code == 0 else f"failed ({code})"
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            status[key] = "stopped: budget"
    return folders, status


# --- measuring ------------------------------------------------------------------------------------------


def attempt(fn: Callable[[], object]):
    """fn(), or the one-line description of what it raised."""
    try:
        return fn()
    except Exception as e:  # an informational figure must not stop the run
        return describe(e)


@contextlib.contextmanager
def tf32(enabled: bool | None):
    """PyTorch's TF32 switches set to ``enabled`` inside (None: leave them), restored after."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if enabled is not None:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class Bench:
    """The eager models (fp32, fp16) and the clipblip engines, with the calls that the checks and timings use."""

    def __init__(self, folders: dict[str, Path], size: str, device: str, images: list):
        import torch

        from clipblip.engine import BlipEngine, ClipEngine
        from clipblip.export.sources import load_source

        self.torch, self.device, self.images = torch, device, images
        provider = "cuda" if device == "cuda" else "cpu"
        # the BLIP decoder with IO binding (DeviceDecoder), as on CUDA by default; on the CPU too, to check it
        self.engines = {key: ClipEngine.from_dir(folder, provider=provider) if key.startswith("clip")
                        else BlipEngine.from_dir(folder, provider=provider, io_binding=True)
                        for key, folder in folders.items()}
        self.clip = load_source(f"random:clip-{size}")
        self.blip = load_source(f"random:blip-{size}", "caption")
        # the random presets are built with eager attention (for export); a user's CLIPModel gets PyTorch's
        # SDPA by default, so the CLIP baseline does too (BLIP has no other implementation in transformers)
        self.clip.model.set_attn_implementation("sdpa")
        self.eager = {}
        for name, source in (("clip", self.clip), ("caption", self.blip)):
            model = source.model.to(device).eval()
            self.eager[f"{name} fp32"] = model
            self.eager[f"{name} fp16"] = copy.deepcopy(model).half()
        self.attention = {key: model.config._attn_implementation for key, model in self.eager.items()}

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def eager_clip_images(self, precision: str, images):
        torch = self.torch
        dtype = torch.float16 if precision == "fp16" else torch.float32
        with torch.inference_mode():
            pixels = self.clip.image_processor(images=images, return_tensors="pt")["pixel_values"]
            out = self.eager[f"clip {precision}"].get_image_features(pixel_values=pixels.to(self.device, dtype))
            feats = out if isinstance(out, torch.Tensor) else out.pooler_output
            result = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
        self.sync()
        return result

    def eager_clip_texts(self, texts):
        torch = self.torch
        with torch.inference_mode():
            ids = self.clip.tokenizer(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
            out = self.eager["clip fp32"].get_text_features(input_ids=ids["input_ids"].to(self.device),
                                                            attention_mask=ids["attention_mask"].to(self.device))
            feats = out if isinstance(out, torch.Tensor) else out.pooler_output
            return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()

    def eager_caption_ids(self, precision: str, images) -> list[list[int]]:
        """transformers' greedy generate(): new ids per image, cut after [SEP] (as clipblip's token_ids)."""
        torch = self.torch
        dtype = torch.float16 if precision == "fp16" else torch.float32
        with torch.inference_mode():
            pixels = self.blip.image_processor(images=images, return_tensors="pt")["pixel_values"]
            out = self.eager[f"caption {precision}"].generate(pixel_values=pixels.to(self.device, dtype),
                                                              max_new_tokens=NEW_TOKENS, num_beams=1, do_sample=False)
            rows = out[:, 1:].cpu().tolist()
        self.sync()
        eos = self.blip.model.config.text_config.sep_token_id
        return [row[: row.index(eos) + 1] if eos in row else row for row in rows]

    def caption_ids(self, precision: str, images, on_device: bool = True) -> list[list[int]]:
        engine = self.engines[f"caption {precision}"]
        decoder = engine.decoder
        saved = getattr(decoder, "argmax_session", None)
        if not on_device and saved is not None:
            decoder.argmax_session = None  # greedy then takes the argmax of host logits
        try:
            return [g.token_ids for g in engine.generate_captions(images, max_new_tokens=NEW_TOKENS)]
        finally:
            if saved is not None:
                decoder.argmax_session = saved


def checks(bench: Bench, folders: dict[str, Path], device: str) -> dict:
    """fp32 parity with PyTorch (TF32 off), the fp16 gates, the argmax on the device."""
    import numpy as np

    from clipblip.manifest import Manifest

    images, result = bench.images, {}
    texts = ["a photo of a cat", "a woman in a navy uniform", "a blue box on a table"]
    with tf32(False if device == "cuda" else None):
        want = bench.eager_clip_images("fp32", images)
        got = bench.engines["clip fp32"].embed_images(images)
        image_diff = float(np.abs(want - got).max())
        text_diff = float(np.abs(bench.eager_clip_texts(texts) - bench.engines["clip fp32"].embed_texts(texts)).max())
        result["clip fp32 parity"] = {
            "images": len(images), "texts": len(texts), "image_max_abs_diff": image_diff,
            "text_max_abs_diff": text_diff, "tolerance": CLIP_TOL,
            "least_image_cosine": float(np.min(np.sum(want * got, axis=1))),
            "passed": image_diff <= CLIP_TOL and text_diff <= CLIP_TOL}
        if device == "cuda" and image_diff > CLIP_TOL:
            result["clip fp32 parity"]["without_ort_tf32"] = no_tf32_image_diff(bench, want)
        theirs = bench.eager_caption_ids("fp32", images[:2])
        ours = bench.caption_ids("fp32", images[:2])
        result["caption fp32 parity"] = {"images": 2, "new_tokens": NEW_TOKENS, "eager": theirs, "clipblip": ours,
                                         "passed": ours == theirs}
    gates = {}
    for key, folder in folders.items():
        if not key.endswith("fp16"):
            continue
        for graph, info in Manifest.load(folder).graphs.items():
            accuracy = info.accuracy or {}
            if accuracy:
                gates[f"{key.split()[0]} {graph}"] = {
                    "precision": info.precision, "passed": bool(accuracy.get("passed")),
                    "provider": accuracy.get("provider"), "least_cosine": accuracy.get("measured"),
                    "threshold": accuracy.get("threshold"), "reason": accuracy.get("reason")}
    # on CUDA the gates must have run there (the export processes checked that CUDA sessions run)
    result["fp16 gates"] = {"graphs": gates, "passed": bool(gates) and all(
        g["passed"] and (device != "cuda" or g["provider"] == "CUDAExecutionProvider") for g in gates.values())}
    argmax = {}
    for precision in PRECISIONS:
        engine = bench.engines[f"caption {precision}"]
        decoder, steps = engine.decoder, []
        if not getattr(decoder, "device_argmax", False):
            argmax[precision] = {"passed": False, "reason": f"{type(decoder).__name__} has no device argmax"}
            continue
        real = decoder.step_argmax

        def counted(*args, real=real):
            steps.append(1)
            return real(*args)

        decoder.step_argmax = counted
        try:
            on_device = bench.caption_ids(precision, images)
        finally:
            del decoder.step_argmax
        on_host = bench.caption_ids(precision, images, on_device=False)
        argmax[precision] = {"device_argmax_steps": len(steps), "same_tokens_as_host_argmax": on_device == on_host,
                             "decoder": type(decoder).__name__, "cache_on": decoder.device,
                             "passed": bool(steps) and on_device == on_host}
    result["argmax on the device"] = {**argmax, "passed": all(a["passed"] for a in argmax.values())}
    ours16 = attempt(lambda: bench.caption_ids("fp16", images[:2]))
    theirs16 = attempt(lambda: bench.eager_caption_ids("fp16", images[:2]))
    result["caption fp16 vs fp32 (information)"] = {
        "clipblip fp16 same tokens as fp32": ours16 == result["caption fp32 parity"]["clipblip"] or ours16,
        "eager fp16 same tokens as fp32": theirs16 == result["caption fp32 parity"]["eager"] or theirs16}
    result["passed"] = all(v["passed"] for k, v in result.items() if isinstance(v, dict) and "passed" in v)
    return result


def no_tf32_image_diff(bench: Bench, want) -> dict:
    """Diagnosis: the fp32 image tower in a session with the CUDA provider's TF32 off (use_tf32=0)."""
    import numpy as np
    import onnxruntime as ort

    engine = bench.engines["clip fp32"]
    info = engine.manifest.graphs["image_tower"]
    try:
        session = ort.InferenceSession(str(engine.folder / info.file),
                                       providers=[("CUDAExecutionProvider", {"use_tf32": "0"})])
        raw = session.run(["image_embeds"], {"pixel_values": engine.preprocess(bench.images)})[0]
    except Exception as e:  # an option this ONNX Runtime does not know
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    got = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    return {"image_max_abs_diff": float(np.abs(want - got).max())}


def timings(bench: Bench, deadline: float, quick: bool) -> tuple[dict, dict]:
    image = bench.images[:1]
    results, errors = {}, {}
    pixels = bench.clip.image_processor(images=image, return_tensors="pt")["pixel_values"]
    host_pixels = pixels.numpy()
    torch = bench.torch

    def tower(precision):
        model = bench.eager[f"clip {precision}"]
        device_pixels = pixels.to(bench.device, torch.float16 if precision == "fp16" else torch.float32)

        def call():
            with torch.inference_mode():
                out = model.get_image_features(pixel_values=device_pixels)
            bench.sync()
            return out
        return call

    def ours_tower(precision):
        session = bench.engines[f"clip {precision}"].sessions["image_tower"]
        return lambda: session.run(["image_embeds"], {"pixel_values": host_pixels})

    def caption_host_argmax():
        return bench.caption_ids("fp16", image, on_device=False)

    clip_rounds, caption_rounds = (3, 2) if quick else (30, 10)
    workloads = {
        "CLIP image embedding, batch 1": (5, clip_rounds, {
            **{f"eager {p}": (lambda p=p: bench.eager_clip_images(p, image)) for p in PRECISIONS},
            **{f"clipblip {p}": (lambda p=p: bench.engines[f"clip {p}"].embed_images(image)) for p in PRECISIONS}}),
        "CLIP image tower alone, batch 1, preprocessed pixels": (5, clip_rounds, {
            **{f"eager {p}": tower(p) for p in PRECISIONS}, **{f"clipblip {p}": ours_tower(p) for p in PRECISIONS}}),
        f"BLIP caption, {NEW_TOKENS} new tokens": (2, caption_rounds, {
            **{f"eager {p}": (lambda p=p: bench.eager_caption_ids(p, image)) for p in PRECISIONS},
            **{f"clipblip {p}": (lambda p=p: bench.caption_ids(p, image)) for p in PRECISIONS},
            "clipblip fp16, argmax on the host": caption_host_argmax}),
    }
    for i, (work, (warmup, rounds, variants)) in enumerate(workloads.items()):
        left = deadline - time.monotonic()
        if left < 10:
            errors[work] = "skipped: budget"
            continue
        log(f"timing {work}")
        share = time.monotonic() + left / (len(workloads) - i)  # this workload's share of the time left
        with tf32(None):
            results[work] = summarise(interleaved(variants, rounds, warmup=warmup, deadline=share, errors=errors),
                                      ratios=RATIOS)
    lengths = {f"{side} {p}": attempt(lambda side=side, p=p: len(
        (bench.eager_caption_ids if side == "eager" else bench.caption_ids)(p, image)[0]))
        for side in ("eager", "clipblip") for p in PRECISIONS}
    return results, {"errors": errors, "caption_tokens_generated": lengths}


def goals(latency: dict) -> list[dict]:
    out = []
    for work, variant, base, target in GOALS:
        row = latency.get(work, {})
        if variant in row and base in row:
            ratio = row[base]["p50_ms"] / row[variant]["p50_ms"]
            out.append({"work": work, "variant": variant, "baseline": base, "ratio": ratio, "goal": target,
                        "met": ratio >= target})
        else:
            out.append({"work": work, "variant": variant, "baseline": base, "ratio": None, "goal": target,
                        "met": False, "reason": "not measured"})
    return out


# --- the report -----------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# clipblip on {env.get('gpu', '?')}", "",
             f"Measured {report['date']} by benchmarks/gpu.sh: {env.get('nvidia_smi', env.get('gpu'))}, driver CUDA "
             f"{env.get('driver_cuda', '?')}; {machine_text(env)}; Python {env['python']}, torch "
             f"{env['torch']} (CUDA {env['torch_cuda']}), transformers {env['transformers']}, onnx {env['onnx']}, "
             f"onnxruntime {env['onnxruntime']} ({', '.join(env['onnxruntime_distributions'])}); clipblip at "
             f"{commit_text(env)}. Models: {report['models']} (RANDOM weights: speed only). TF32: "
             f"{env['tf32']}. Eager attention: {report.get('eager_attention', '?')}. clipblip sessions: "
             f"{report.get('providers', '?')}.", "",
             f"Status: {report['status']}.", ""]
    if report.get("exports"):
        lines += ["## Exports", ""] + table(["model", "status"], report["exports"].items()) + [""]
    checks_ = report.get("checks")
    if checks_:
        lines += ["## Checks", ""]
        parity = checks_["clip fp32 parity"]
        lines.append(f"- CLIP fp32 parity (TF32 off): image max |diff| {parity['image_max_abs_diff']:.2e}, text "
                     f"{parity['text_max_abs_diff']:.2e} (tolerance {parity['tolerance']:g}): "
                     f"**{'PASS' if parity['passed'] else 'FAIL'}**"
                     + (f"; with ORT's TF32 off: {parity['without_ort_tf32']}" if "without_ort_tf32" in parity else ""))
        cap = checks_["caption fp32 parity"]
        lines.append(f"- BLIP caption fp32 greedy tokens ({cap['new_tokens']} new, {cap['images']} images) same as "
                     f"transformers' generate(): **{'PASS' if cap['passed'] else 'FAIL'}**")
        gates = checks_["fp16 gates"]
        lines.append(f"- fp16 gates: **{'PASS' if gates['passed'] else 'FAIL'}**")
        for name, g in gates["graphs"].items():
            lines.append(f"  - {name}: kept {g['precision']}, passed {g['passed']} on {g['provider']}, least cosine "
                         f"{g['least_cosine']} (threshold {g['threshold']})"
                         + (f", {g['reason']}" if g["reason"] else ""))
        arg = checks_["argmax on the device"]
        lines.append(f"- greedy argmax on the device, same tokens as the host argmax: "
                     f"**{'PASS' if arg['passed'] else 'FAIL'}** "
                     + "; ".join(f"{p}: {a}" for p, a in arg.items() if p in PRECISIONS))
        lines.append(f"- information: {checks_['caption fp16 vs fp32 (information)']}")
        lines.append("")
    if report.get("latency"):
        lines += ["## Timings", "", "Medians of interleaved rounds after warm-up, the same image (grace_hopper.jpg).",
                  ""]
        lines += table(["work", "variant", "p50 ms", "p95 ms", "runs", *(f"× {base}" for base in RATIOS.values())], (
            [work, name, cell(r["p50_ms"], 2), cell(r["p95_ms"], 2), r["samples"],
             *(cell(r.get(key), 2, "×") for key in RATIOS)]
            for work, variants in report["latency"].items() for name, r in variants.items()))
        extra = report.get("timing_notes", {})
        if extra.get("caption_tokens_generated"):
            lines += ["", f"Caption tokens generated per variant: {extra['caption_tokens_generated']}."]
        if extra.get("errors"):
            lines += ["", f"Not measured: {extra['errors']}."]
        lines.append("")
    if report.get("goals"):
        lines += ["## Goals", ""]
        for g in report["goals"]:
            ratio = f"{g['ratio']:.2f}×" if g["ratio"] is not None else g.get("reason", "—")
            lines.append(f"- {g['work']}: {g['variant']} vs {g['baseline']} = {ratio} (goal ≥ {g['goal']}×): "
                         f"**{'met' if g['met'] else 'not met'}**")
        lines.append("")
    return "\n".join(lines)


def save(report: dict, out: Path) -> None:
    write_results(out / "results.json", report, markdown(report))


def photos() -> list:
    """The two photos matplotlib ships (grace_hopper.jpg first), or two generated images without it."""
    import numpy as np
    from PIL import Image

    try:
        return [sample_image(name) for name in PHOTOS]
    except Exception as e:  # no matplotlib here: the speed does not depend on the picture
        log(f"generated images instead of matplotlib's photos ({describe(e)})")
        rng = np.random.default_rng(0)
        return [Image.fromarray(rng.integers(0, 256, (600, 512, 3), dtype=np.uint8)),
                Image.fromarray(np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (300, 2, 3)))]


def run(args) -> int:
    start = time.monotonic()
    deadline = start + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch  # noqa: F401  (before onnxruntime: its CUDA libraries serve the CUDA provider)

    if args.device == "cuda":
        if not torch.cuda.is_available():
            log("torch sees no CUDA device: nothing measured")
            return 3
        log(load_cuda_libraries())
    from PIL import Image

    report = {"date": time.strftime("%Y-%m-%d"), "environment": environment(args.device), "status": "exporting",
              "models": f"random:clip-{args.size}, random:blip-{args.size} (caption)", "budget_s": args.budget}
    save(report, out)
    models = Path(args.models) if args.models else Path(tempfile.mkdtemp(prefix="clipblip-gpu-models-"))
    # exports get at most 60 % of the budget: the rest is for loading, checks and timings
    folders, report["exports"] = export_all(models, args.size, start + 0.6 * args.budget)
    report["export_s"] = round(time.monotonic() - start, 1)
    failed = {k: v for k, v in report["exports"].items() if not (v == "reused" or v.startswith("exported"))}
    if failed:
        report["status"] = f"stopped: exports did not finish: {failed}"
        save(report, out)
        log(report["status"])
        return 1
    images = photos() + [Image.new("RGB", (40, 30), (200, 10, 10))]
    log("loading the engines and the eager models")
    report["status"] = "checking"
    bench = Bench(folders, args.size, args.device, images)
    report["providers"] = {key: sorted({s.get_providers()[0] for s in engine.sessions.values()})
                           for key, engine in bench.engines.items()}
    report["eager_attention"] = bench.attention
    log("checks: parity, fp16 gates, argmax on the device")
    report["checks"] = checks(bench, folders, args.device)
    report["status"] = "timing"
    save(report, out)
    report["latency"], report["timing_notes"] = timings(bench, deadline - 5, args.quick)
    report["goals"] = goals(report["latency"])
    report["elapsed_s"] = round(time.monotonic() - start, 1)
    met = sum(g["met"] for g in report["goals"])
    report["status"] = (f"complete in {report['elapsed_s']} s; checks "
                        f"{'PASS' if report['checks']['passed'] else 'FAIL'}; "
                        f"goals met {met} of {len(report['goals'])}")
    save(report, out)
    print(markdown(report), flush=True)
    log(report["status"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="results folder (results.json, results.md)")
    parser.add_argument("--budget", type=float, default=500.0, help="seconds for everything (default 500)")
    parser.add_argument("--models", help="export folder, reused when complete (default: a new temporary folder)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: the harness on the CPU provider (with --size tiny: a test of this script)")
    parser.add_argument("--size", choices=("base", "tiny"), default="base")
    parser.add_argument("--quick", action="store_true", help="few timing rounds (harness check)")
    parser.add_argument("--probe", action="store_true", help="check the environment only")
    parser.add_argument("--no-cuda", action="store_true", help="with --probe: do not try a CUDA session")
    parser.add_argument("--export-one", nargs=4, metavar=("SOURCE", "TASK", "PRECISION", "FOLDER"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        return probe(cuda=not args.no_cuda)
    if args.export_one:
        source, task, precision, folder = args.export_one
        export_one(source, task, precision, Path(folder), args.threads)
        return 0
    if not args.out:
        parser.error("--out is required")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
