"""clipblip against PyTorch eager: latency, throughput, cold start and peak memory, in one run.

    python benchmarks/run.py [--quick] [--threads 2] [--repeat 7] [--pause 0.2] [--out bench-output]

Every workload goes from PIL images (and texts) to what a user gets (embeddings, a caption, an
answer, match scores), on both sides, with the same inputs and the same number of threads. The
variants of one workload run interleaved in the same process after a warm-up, with a pause of --pause
seconds before each timed call, so that the threads of whichever ran before (ONNX Runtime's spin, PyTorch's
OpenMP pool) have gone to sleep; ratios are to PyTorch eager fp32 measured in the same run. clipblip runs with
provider "auto", as users do; the backend each graph ran on is recorded. CLIP is also exported in bf16, and its
int8 folder with `--calibration` (benchmarks/calibration.py's 96 images and texts), as a user who calibrates does. Cold start and peak memory are
measured in fresh processes: the first load of a folder on this machine (its stored checks run, results
recorded in a fresh user cache), then a new process with that record in place.
The models are random-weight presets with the real architectures (`random:clip-base`,
`random:blip-base`; `--quick` uses the tiny presets): honest about speed, never about quality.
Writes results.json (with the environment), results.md and chart.png into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from common import (PHOTOS, environment, export_once, interleaved, measured_line, sample_image, sample_photo, say,
                    summarise, table, write_results)  # benchmarks/common.py

HERE = Path(__file__).resolve().parent
CHILD = HERE / "cold_start.py"
LIBRARIES = ("torch", "transformers", "onnxruntime", "openvino")  # their versions, in the record and the table


def export_all(tmp: Path, size: str) -> dict[str, Path]:
    from clipblip.export import PRECISIONS

    from calibration import calibration_folder

    folders = {}
    for name, preset, task in (("clip", f"random:clip-{size}", None), ("caption", f"random:blip-{size}", "caption"),
                               ("vqa", f"random:blip-{size}", "vqa"), ("itm", f"random:blip-{size}", "itm")):
        # int4 touches only the decoder step (the weights read every token): measured on captions; bf16 (OpenVINO
        # where the CPU computes it) on CLIP, whose towers are all a bf16 folder runs there
        precisions = ("fp32", "int8", "int4") if task == "caption" else ("fp32", "int8", "bf16") if name == "clip" \
            else ("fp32", "int8")
        for precision in (p for p in precisions if p in PRECISIONS):
            # CLIP int8 as a user who calibrates exports it (NNCF's static int8 copies where they pass their gates);
            # --work: an earlier run's export, reused
            calibration = calibration_folder(tmp / "calibration") if (name, precision) == ("clip", "int8") else None
            folders[f"{name} {precision}"] = export_once(preset, tmp / f"{name}-{precision}", task=task,
                                                         precision=precision, calibration=calibration)
    return folders


def engine_variants(folders: dict[str, Path], threads: int) -> dict[str, object]:
    """Engines by "<kind> <variant>": each folder with ``provider="auto"`` (what `auto` picks on this CPU), and
    BLIP's lower-precision folders that hold an OpenVINO copy of their image tower also with "openvino" where
    auto did not pick it."""
    from clipblip.engine import BlipEngine, ClipEngine
    from clipblip.engine.openvino import OpenVinoGraph

    engines = {}
    for key, folder in folders.items():
        cls = ClipEngine if key.startswith("clip") else BlipEngine
        engines[key] = cls.from_dir(folder, provider="auto", threads=threads)
        auto_picked = any(isinstance(s, OpenVinoGraph) for s in engines[key].sessions.values())
        if engines_with_openvino(folder) and not auto_picked:
            engines[f"{key} + OpenVINO"] = cls.from_dir(folder, provider="openvino", threads=threads)
    return engines


def backends(engines: dict[str, object]) -> dict[str, dict[str, str]]:
    """Per engine, where each graph ran and in which precision (and int8 format)."""
    from clipblip.engine.openvino import OpenVinoGraph

    out = {}
    for key, engine in engines.items():
        graphs = {}
        for name, session in engine.sessions.items():
            info = engine.manifest.graphs[name]
            form = (info.accuracy.get("quantization") or {}).get("format")
            if isinstance(session, OpenVinoGraph):
                graphs[name] = f"{session.get_providers()[0]}, {info.backends['openvino']['weights']} weights"
            else:
                graphs[name] = f"{session.get_providers()[0]}, {info.precision}" + (f" ({form})" if form else "")
        out[f"clipblip {key}"] = graphs
    return out


def eager_variants(fn: Callable[[], object]) -> dict[str, Callable[[], object]]:
    def run(autocast: bool):
        def call():
            context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
            with torch.inference_mode(), context:
                return fn()
        return call
    return {"eager fp32": run(False), "eager bf16 autocast": run(True)}


def workloads(folders: dict[str, Path], size: str, threads: int, images: list) -> tuple[dict, dict]:
    from clipblip.export.sources import load_source

    engines = engine_variants(folders, threads)
    clip = load_source(f"random:clip-{size}")
    blip = {task: load_source(f"random:blip-{size}", task) for task in ("caption", "vqa", "itm")}
    question, text = "what is in the picture?", ["a photo of a woman in uniform"]
    batch = images * 16  # 32 images for the throughput case

    def clip_images(pil):
        pixels = clip.image_processor(images=pil, return_tensors="pt")["pixel_values"]
        return clip.model.get_image_features(pixel_values=pixels)

    def clip_text():
        ids = clip.tokenizer(text, return_tensors="pt")
        return clip.model.get_text_features(**ids)

    def caption(beams=1):
        pixels = blip["caption"].image_processor(images=images[:1], return_tensors="pt")["pixel_values"]
        return blip["caption"].model.generate(pixel_values=pixels, max_new_tokens=20, num_beams=beams, do_sample=False)

    def vqa():
        pixels = blip["vqa"].image_processor(images=images[:1], return_tensors="pt")["pixel_values"]
        ids = blip["vqa"].tokenizer([question], return_tensors="pt")
        return blip["vqa"].model.generate(pixel_values=pixels, input_ids=ids.input_ids,
                                          attention_mask=ids.attention_mask, max_new_tokens=10, num_beams=1,
                                          do_sample=False)

    def itm():
        pixels = blip["itm"].image_processor(images=images[:1], return_tensors="pt")["pixel_values"]
        ids = blip["itm"].tokenizer(text, return_tensors="pt")
        return blip["itm"].model(pixel_values=pixels, input_ids=ids.input_ids,
                                 attention_mask=ids.attention_mask).itm_score

    def ours(kind, call):
        return {f"clipblip {key.split(' ', 1)[1]}": (lambda e=engine: call(e))
                for key, engine in engines.items() if key.split(" ", 1)[0] == kind}

    return backends(engines), {
        "CLIP image embedding, batch 1": (1, {**eager_variants(lambda: clip_images(images[:1])),
                                             **ours("clip", lambda e: e.embed_images(images[:1]))}),
        "CLIP image embedding, batch 32": (32, {**eager_variants(lambda: clip_images(batch)),
                                               **ours("clip", lambda e: e.embed_images(batch))}),
        # the engine caches text embeddings by text: cleared each call to time the text tower
        "CLIP text embedding, batch 1, short prompt": (1, {**eager_variants(clip_text), **ours(
            "clip", lambda e: (e.text_cache.clear(), e.embed_texts(text)))}),
        "BLIP caption, 20 new tokens, image → string": (1, {
            **eager_variants(caption), **ours("caption", lambda e: e.caption(images[:1], max_new_tokens=20))}),
        "BLIP caption, beam search (3 beams), 20 new tokens": (1, {
            **eager_variants(lambda: caption(3)),
            **ours("caption", lambda e: e.caption(images[:1], max_new_tokens=20, num_beams=3))}),
        "BLIP VQA, image + question → answer": (1, {
            **eager_variants(vqa), **ours("vqa", lambda e: e.answer(images[:1], question))}),
        "BLIP ITM, image + text → match score": (1, {
            **eager_variants(itm), **ours("itm", lambda e: e.match(images[:1], text))}),
    }


def engines_with_openvino(folder: Path) -> bool:
    """Whether the folder holds an OpenVINO copy of a graph and OpenVINO is installed."""
    from clipblip.engine.openvino import available
    from clipblip.engine.session import has_copy
    from clipblip.manifest import Manifest

    return available() and any(has_copy(g.backends.get("openvino", {})) for g in Manifest.load(folder).graphs.values())


def cold_start(folders: dict[str, Path], size: str, threads: int, tmp: Path, photo: Path) -> dict:
    """New process → first caption, and that process's peak memory, for eager and clipblip."""
    from clipblip.export.sources import load_source

    checkpoint = tmp / "blip-caption-checkpoint"
    source = load_source(f"random:blip-{size}", "caption")
    source.model.save_pretrained(checkpoint)
    source.image_processor.save_pretrained(checkpoint)
    source.tokenizer.save_pretrained(checkpoint)
    results = {}
    runs_of = [("eager fp32", ["eager", str(checkpoint)])]
    for key in ("caption fp32", "caption int8", "caption int4"):
        if key in folders:
            runs_of.append((f"clipblip {key.split()[1]}", ["clipblip", str(folders[key]), "auto"]))
            if engines_with_openvino(folders[key]):
                runs_of.append((f"clipblip {key.split()[1]} + OpenVINO", ["clipblip", str(folders[key]), "openvino"]))
    for name, args in runs_of:
        runs = []
        # a user cache of its own: the first process loads the folder for the first time on this machine (each
        # graph's stored check runs and is recorded), the others find the record in place
        env = {**os.environ, "CLIPBLIP_CACHE": tempfile.mkdtemp(prefix="clipblip-cold-", dir=tmp)}
        for _ in range(3):
            start = time.perf_counter()
            child = subprocess.run([sys.executable, str(CHILD), *args[:2], str(photo), str(threads), *args[2:]],
                                   capture_output=True, text=True, env=env)
            if child.returncode:
                raise RuntimeError(f"cold start of {name} failed: {child.stderr.strip()[-2000:]}")
            runs.append({"wall_s": time.perf_counter() - start, **json.loads(child.stdout.strip().splitlines()[-1])})
        best = min(runs[1:], key=lambda r: r["wall_s"])  # with the record in place and a warm file cache
        results[name] = {**best, "first_load_wall_s": runs[0]["wall_s"],
                         "first_load_over_recorded_s": runs[0]["wall_s"] - best["wall_s"]}
    base = results["eager fp32"]
    for r in results.values():
        r["cold_start_ratio_to_eager"] = r["wall_s"] / base["wall_s"]
        r["peak_rss_ratio_to_eager"] = r["peak_rss_mb"] / base["peak_rss_mb"]
    return results


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"{measured_line(report['date'], env, *LIBRARIES)} Provider {env['provider']}. Models: "
             f"{report['models']} (random weights). Median (p50) and p95 of {report['repeat']} interleaved runs after "
             f"a warm-up, each after a {report.get('pause_s', 0)} s pause. GPU: {env['gpu']}.", ""]
    lines += table(["work", "variant", "p50 ms", "p95 ms", "items/s", "× eager fp32"], (
        [work, name, f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['throughput_per_s']:.2f}",
         f"{r['ratio_to_eager_fp32']:.2f}×"] for work, variants in report["latency"].items()
        for name, r in variants.items()))
    lines += ["", "Backends (provider auto on this CPU):", ""]
    for name, graphs in report.get("backends", {}).items():
        lines.append(f"- {name}: " + "; ".join(f"{g} on {where}" for g, where in graphs.items()))
    lines += [""] + table(["new process → first caption", "wall s", "× eager", "peak RSS MB", "× eager",
                           "first load on this machine (checks run) s"], (
        [name, f"{r['wall_s']:.2f}", f"{r['cold_start_ratio_to_eager']:.2f}×", f"{r['peak_rss_mb']:.0f}",
         f"{r['peak_rss_ratio_to_eager']:.2f}×", f"{r['first_load_wall_s']:.2f}"]
        for name, r in report["cold_start"].items()))
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    works = list(report["latency"])
    variants = [v for v in dict.fromkeys(v for w in works for v in report["latency"][w]) if v != "eager fp32"]
    fig = Figure(figsize=(11, 5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        ratios = [report["latency"][w].get(variant, {}).get("ratio_to_eager_fp32", 0.0) for w in works]
        bars = ax.bar(np.arange(len(works)) + i * width, ratios, width, label=variant)
        ax.bar_label(bars, fmt="%.1f×", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(works)) + width * (len(variants) - 1) / 2,
                  [w.replace(", ", ",\n", 1) for w in works], fontsize=8)
    ax.set_ylabel("speed-up over PyTorch eager fp32 (p50)")
    ax.set_title(f"clipblip vs PyTorch eager, {report['environment']['threads']} threads, "
                 f"{report['environment']['cpu']} (random-weight models)", fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny presets, few runs: checks the harness only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per variant (default 7, quick 2)")
    parser.add_argument("--pause", type=float, default=None, help="seconds before each timed call (default 0.2, "
                                                                    "quick 0)")
    parser.add_argument("--out", default="bench-output")
    parser.add_argument("--work", default=None, help="keep the exported folders here and reuse them next time "
                                                      "(default: a temporary folder)")
    args = parser.parse_args(argv)
    size, repeat = ("tiny", args.repeat or 2) if args.quick else ("base", args.repeat or 7)
    pause = args.pause if args.pause is not None else (0.0 if args.quick else 0.2)

    torch.set_num_threads(args.threads)
    photo = sample_photo()
    images = [sample_image(name) for name in PHOTOS]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (nullcontext(args.work) if args.work else tempfile.TemporaryDirectory()) as tmp:
        Path(tmp).mkdir(parents=True, exist_ok=True)
        folders = export_all(Path(tmp), size)
        timings = {}
        ran_on, works = workloads(folders, size, args.threads, images)
        for work, (items, variants) in works.items():
            say(f"timing {work}")
            timings[work] = summarise(interleaved(variants, repeat, pause=pause), items=items)
            write_results(out / "latency.partial.json", timings)  # kept if a later part fails
        say("timing cold starts")
        cold = cold_start(folders, size, args.threads, Path(tmp), photo)
    env = environment(args.threads, *LIBRARIES, provider="auto (CPU: ONNX Runtime, OpenVINO where the folder says "
                      "auto picks it)", gpu="none on this machine: no CUDA figures were measured")
    report = {"date": time.strftime("%Y-%m-%d"), "environment": env, "repeat": repeat, "pause_s": pause,
              "models": f"random:clip-{size}, random:blip-{size}", "latency": timings, "backends": ran_on,
              "cold_start": cold}
    write_results(out / "results.json", report, markdown(report))
    (out / "latency.partial.json").unlink(missing_ok=True)
    chart(report, out / "chart.png")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
