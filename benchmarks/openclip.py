"""open_clip eager fp32 against clipblip fp32 and int8, per architecture at full size, in one run, on the CPU at hand.

    python benchmarks/openclip.py [--archs vit-b-32,mobileclip2-s0,...] [--threads 2] [--repeat 7] [--pause 0.2]
                                  [--quick] [--out bench-output/openclip]

Each architecture is the open_clip family's full-size random preset (``random:openclip-ARCH``: the real architecture
with seeded random weights, honest about speed, never about answers), exported once fp32 and once int8 into
``OUT/models/`` (reused by later runs; ``exports.json`` there keeps how long each export took). The open_clip side is
the same random model: the export's source (``load_source``), its tokenizer, and open_clip's evaluation transform
built from the same preprocess config. Where the export folded training-time branches (MobileCLIP's FastViT), the
eager baseline is the unfolded model users run (``open_clip.create_model_and_transforms(ARCH)`` after
``torch.manual_seed(0)``: the same weights before folding), and the folded eager model is timed beside it. Works, one
photo and the same texts on every side, same threads, interleaved in one process, p50 of ``--repeat`` after a pause:
one image → embedding (``encode_image(preprocess(image)[None])`` against ``embed_images``), one text → embedding
(``encode_text(tokenizer([text]))`` against ``embed_texts``, the engine's text cache cleared each call), zero-shot
classify of one image over five labels (the text tower runs every call on both sides). The answers of the timed calls
give the parity of clipblip against eager (normalised embeddings: max abs difference and cosine; probabilities: max
abs difference). An architecture whose preset cannot be built or exported here is skipped and named in the results.
``--quick``: ViT-B-32 alone, 2 rounds, no pause (checks the harness; the export is still full size). Writes
results.json and results.md into --out.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from common import (cell, describe, environment, export_once, interleaved, measured_line, sample_image, say,
                    summarise, table, write_results)  # benchmarks/common.py

ARCHS = ("vit-b-32", "vit-b-32-quickgelu", "vit-h-14", "vit-b-16-siglip", "vit-b-16-siglip2", "mobileclip2-s0",
         "mobileclip-s1", "pe-core-b-16", "xlm-roberta-base-vit-b-32")
LIBRARIES = ("torch", "open_clip", "timm", "onnxruntime")
LABELS = ["a cat", "a dog", "a car", "a woman in uniform", "a blue gift box"]
EAGER, FOLDED = "eager fp32", "eager fp32, branches folded"
WORKS = ("image embedding, batch 1", "text embedding, batch 1", "classify, 1 image × 5 new labels")


def presets() -> dict[str, str]:
    """ARCH (the preset's name without "openclip-") → the open_clip architecture name, for every registry preset."""
    from clipblip.families import family

    return {p.name.removeprefix("openclip-"): p.config["architecture"] for p in family("open_clip").presets}


def cpu_seconds() -> tuple[float, float]:
    """(seconds of CPU busy on the whole machine, seconds used by this process) so far, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait
        stat = Path(f"/proc/{os.getpid()}/stat").read_text()
        own = sum(int(x) for x in stat.rsplit(")", 1)[1].split()[11:15])
        return busy / tick, own / tick
    except (OSError, ValueError, IndexError):
        return float("nan"), float("nan")


def export_both(arch: str, models: Path) -> tuple[dict[str, Path], dict[str, dict]]:
    """The fp32 and int8 folders of ``random:openclip-ARCH`` (exported unless already there), and per precision
    how long that took and whether the folder was reused."""
    import json

    log = models / "exports.json"  # how long each folder's export took, kept for the runs that reuse it
    known = json.loads(log.read_text()) if log.is_file() else {}
    folders, made = {}, {}
    for precision in ("fp32", "int8"):
        exported: list[str] = []
        start = time.perf_counter()
        folders[precision] = export_once(f"random:openclip-{arch}", models / f"openclip-{arch}-{precision}",
                                         precision=precision, progress=lambda m: (exported.append(m), say(m)))
        name = folders[precision].name
        if exported:
            known[name] = {"seconds": round(time.perf_counter() - start, 1), "date": time.strftime("%Y-%m-%d")}
            log.write_text(json.dumps(known, indent=2) + "\n")
        made[precision] = {"seconds": known.get(name, {}).get("seconds"), "reused": not exported}
    return folders, made


def eager_side(arch: str, architecture: str):
    """(source, {variant: open_clip model}, preprocess, notes): the export's source model and, where it was folded,
    the unfolded model built the same way (seeded), which is then the baseline."""
    import torch
    from clipblip.export import openclip
    from clipblip.export.sources import load_source

    open_clip = openclip.import_open_clip()
    from open_clip.transform import PreprocessCfg, image_transform_v2

    source = load_source(f"random:openclip-{arch}")
    preprocess = image_transform_v2(PreprocessCfg(**source.image_processor), is_train=False)
    folded = int(source.facts.get("folded") or 0)
    if not folded:
        return source, {EAGER: source.model}, preprocess, {"folded_modules": 0}
    with openclip._quiet():
        torch.manual_seed(0)  # as build_random seeds it: the same weights, branches not folded
        unfolded, _, _ = open_clip.create_model_and_transforms(architecture, pretrained=None, pretrained_text=False)
    return source, {EAGER: unfolded.eval(), FOLDED: source.model}, preprocess, {"folded_modules": folded}


def workloads(source, models: dict, preprocess, engines: dict, image) -> dict:
    import torch
    import torch.nn.functional as F

    tokenizer = source.tokenizer
    prompts = [engines["fp32"].prompt_template.format(label) for label in LABELS]  # as the engine's classify
    sigmoid = getattr(source.model, "logit_bias", None) is not None

    def eager(fn):
        def bind(model):
            def call():
                with torch.inference_mode():
                    return fn(model)
            return call
        return {name: bind(model) for name, model in models.items()}

    def image_embeds(model):
        return F.normalize(model.encode_image(preprocess(image)[None]), dim=-1)

    def text_embeds(model, texts):
        return F.normalize(model.encode_text(tokenizer(texts)), dim=-1)

    def classify(model):
        logits = model.logit_scale.exp() * image_embeds(model) @ text_embeds(model, prompts).T
        return torch.sigmoid(logits + model.logit_bias) if sigmoid else logits.softmax(dim=-1)

    def ours(call):
        return {f"clipblip {precision}": (lambda e=engine: call(e)) for precision, engine in engines.items()}

    def engine_classify(engine):
        engine.text_cache.clear()
        ranked = dict(engine.classify([image], LABELS)[0])
        return [ranked[label] for label in LABELS]  # probabilities in the labels' order, as eager gives them

    return {
        WORKS[0]: {**eager(image_embeds), **ours(lambda e: e.embed_images([image]))},
        WORKS[1]: {**eager(lambda m: text_embeds(m, prompts[:1])),
                   **ours(lambda e: (e.text_cache.clear(), e.embed_texts(prompts[:1]))[1])},
        WORKS[2]: {**eager(classify), **ours(engine_classify)},
    }


def parity(work: str, answers: dict) -> dict:
    """Per variant other than the baseline: how far its answer of the last timed call is from eager fp32's."""
    import numpy as np

    def array(value):
        return np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float64).reshape(-1)

    if EAGER not in answers:
        return {}
    reference = array(answers[EAGER])
    out = {}
    for name, value in answers.items():
        if name == EAGER:
            continue
        got = array(value)
        row = {"max_abs_diff": float(np.abs(got - reference).max())}
        if not work.startswith("classify"):
            row["cosine"] = float(got @ reference / (np.linalg.norm(got) * np.linalg.norm(reference)))
        out[name] = row
    return out


def run_arch(arch: str, architecture: str, models_dir: Path, threads: int, repeat: int, pause: float, image) -> dict:
    from clipblip.families import load_engine_class

    started = time.perf_counter()
    folders, exports = export_both(arch, models_dir)
    start = time.perf_counter()
    source, eager_models, preprocess, notes = eager_side(arch, architecture)
    notes["eager_load_s"] = round(time.perf_counter() - start, 1)
    engines = {precision: load_engine_class("open_clip").from_dir(folder, provider="auto", threads=threads)
               for precision, folder in folders.items()}
    notes["context_length"] = int(source.tokenizer.context_length)
    notes["image_size"] = source.image_processor["size"]
    notes["parameters_m"] = round(sum(p.numel() for p in source.model.parameters()) / 1e6, 1)
    latency, agreement, errors = {}, {}, {}
    busy0, own0 = cpu_seconds()
    timing_start = time.perf_counter()
    for work, variants in workloads(source, eager_models, preprocess, engines, image).items():
        say(f"timing {arch}: {work}")
        answers: dict = {}
        failed: dict[str, str] = {}
        latency[work] = summarise(interleaved(variants, repeat, pause=pause, errors=failed, results=answers), items=1)
        agreement[work] = parity(work, answers)
        if failed:
            errors[work] = failed
    busy1, own1 = cpu_seconds()
    wall = time.perf_counter() - timing_start
    other = max(0.0, ((busy1 - busy0) - (own1 - own0)) / wall) if wall > 0 else float("nan")
    return {"preset": f"random:openclip-{arch}", "architecture": architecture, "exports": exports,
            "folders": {p: str(f) for p, f in folders.items()}, "notes": notes, "latency": latency,
            "parity_to_eager_fp32": agreement, "errors": errors,
            "other_processes_cores": round(other, 2), "timing_s": round(wall, 1),
            "total_s": round(time.perf_counter() - started, 1)}


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# open_clip eager against clipblip, per architecture ({report['date']})", "",
             f"{measured_line(report['date'], env, *LIBRARIES)} p50 of {report['repeat']} interleaved calls, each "
             f"after a {report['pause_s']} s pause; every variant ran in one process on the same photo and texts.", "",
             f"Command: `{report['command']}`", "",
             "Weights are RANDOM (the presets `random:openclip-ARCH` build open_clip's full-size architectures with "
             "seeded random weights): the speed is honest, the answers are not meaningful. The parity columns compare "
             "each side's answer of its last timed call with eager fp32's (normalised embeddings; classify: the five "
             "probabilities).", ""]
    for arch, result in report["architectures"].items():
        if "skipped" in result:
            continue
        notes = result["notes"]
        exports = ", ".join(f"{p} {cell(e['seconds'], 0, ' s')}{' (folder of an earlier run)' if e['reused'] else ''}"
                            for p, e in result["exports"].items())
        lines += [f"## {result['architecture']} (`{result['preset']}`)", "",
                  f"{notes['parameters_m']} M parameters; text context {notes['context_length']} tokens. Export: "
                  f"{exports}. Other processes kept {result['other_processes_cores']} cores busy while it was timed "
                  f"({result['timing_s']} s)."
                  + (f" The export folded {notes['folded_modules']} training-time branches (FastViT's MobileOne and "
                     f"RepMixer blocks); `{EAGER}` is the unfolded model open_clip builds, as users run it, and "
                     f"`{FOLDED}` the folded one clipblip traced." if notes["folded_modules"] else ""), ""]
        variants = [v for v in (EAGER, FOLDED, "clipblip fp32", "clipblip int8")
                    if any(v in works for works in result["latency"].values())]
        rows = []
        for work, timed in result["latency"].items():
            agreement = result["parity_to_eager_fp32"].get(work, {})
            rows.append([work, *(cell(timed.get(v, {}).get("p50_ms")) for v in variants),
                         *(cell(timed.get(v, {}).get("ratio_to_eager_fp32"), 2, "×") for v in variants[1:]),
                         *(parity_cell(agreement.get(v)) for v in variants[1:])])
        lines += table(["work", *(f"{v} ms" for v in variants), *(f"{v} ×" for v in variants[1:]),
                        *(f"{v} vs eager" for v in variants[1:])], rows, "l" + "r" * (3 * len(variants) - 2))
        for work, failed in result["errors"].items():
            lines += ["", *(f"- {work}, {name}: failed: {error}" for name, error in failed.items())]
        lines.append("")
    skipped = {arch: r["skipped"] for arch, r in report["architectures"].items() if "skipped" in r}
    if skipped:
        lines += ["## Skipped", "", *(f"- `random:openclip-{arch}`: {why}" for arch, why in skipped.items()), ""]
    lines += ["× is eager fp32's p50 over the variant's (above 1: faster), from the same run. Embedding parity: "
              "max |difference| of the normalised embeddings / cosine; classify: max |difference| of the "
              "probabilities.", ""]
    return "\n".join(lines)


def parity_cell(row: dict | None) -> str:
    if not row:
        return "—"
    if "cosine" in row:
        return f"{row['max_abs_diff']:.1e} / {row['cosine']:.6f}"
    return f"{row['max_abs_diff']:.1e}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=",".join(ARCHS),
                        help=f"comma-separated presets without 'openclip-' (default {','.join(ARCHS)})")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=None, help="timed calls per variant (default 7, quick 2)")
    parser.add_argument("--pause", type=float, default=None, help="seconds before each timed call (default 0.2)")
    parser.add_argument("--quick", action="store_true", help="ViT-B-32 alone, 2 rounds, no pause: the harness only")
    parser.add_argument("--out", default="bench-output/openclip")
    args = parser.parse_args(argv)
    archs = ["vit-b-32"] if args.quick else [a.strip() for a in args.archs.split(",") if a.strip()]
    repeat = args.repeat or (2 if args.quick else 7)
    pause = args.pause if args.pause is not None else (0.0 if args.quick else 0.2)
    out = Path(args.out)

    import torch
    from clipblip.errors import ClipblipError

    known = presets()
    unknown = [a for a in archs if a not in known]
    if unknown:
        parser.error(f"--archs: no preset {', '.join(unknown)} (known: {', '.join(known)})")
    torch.set_num_threads(args.threads)
    image = sample_image()
    started = time.perf_counter()
    results: dict = {}
    for arch in archs:
        say(f"== {arch}")
        try:
            results[arch] = run_arch(arch, known[arch], out / "models", args.threads, repeat, pause, image)
        except (ClipblipError, ImportError, OSError, RuntimeError, ValueError) as e:
            # a preset that cannot be built or exported here: named in the results, the others still run
            say(f"skipping {arch}: {describe(e)}")
            results[arch] = {"preset": f"random:openclip-{arch}", "skipped": describe(e)}
    report = {"date": time.strftime("%Y-%m-%d"), "environment": environment(args.threads, *LIBRARIES),
              "command": " ".join(["python benchmarks/openclip.py", *(sys.argv[1:] if argv is None else argv)]),
              "repeat": repeat, "pause_s": pause, "random_weights": True, "labels": LABELS,
              "run_s": round(time.perf_counter() - started, 1), "architectures": results}
    write_results(out / "results.json", report, markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
