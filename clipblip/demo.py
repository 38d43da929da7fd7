"""`clipblip demo`: export CLIP and BLIP, run them on real photos, write the results into one folder."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from .errors import ClipblipError, ModelSourceError
from .manifest import Manifest

# Per model: the real checkpoint (used when the Hub or the local cache has it), then the random preset.
SOURCES: dict[str, tuple[tuple[str, str | None], ...]] = {
    "clip": (("openai/clip-vit-base-patch32", None), ("random:clip-base", None)),
    "caption": (("Salesforce/blip-image-captioning-base", "caption"), ("random:blip-base", "caption")),
    "vqa": (("Salesforce/blip-vqa-base", "vqa"), ("random:blip-base", "vqa")),
    "itm": (("Salesforce/blip-itm-base-coco", "itm"), ("random:blip-base", "itm")),
}
PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
LABELS = ("woman in a naval uniform", "man in a suit", "cat", "dog", "blue gift box", "city skyline")
TEXTS = ("a portrait of a woman in uniform", "a blue box of coloured pencils", "a photo of a cat")
CAPTION_PROMPT = "a picture of"
QUESTION = "what is in the picture?"


def demo_photos(folder: Path) -> list[Path]:
    """Copy the real photos that matplotlib ships into ``folder``."""
    from matplotlib import cbook

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS:
        target = folder / name
        shutil.copyfile(cbook.get_sample_data(name, asfileobj=False), target)
        paths.append(target)
    return paths


def ensure_export(name: str, folder: Path, say: Callable[[str], None]) -> Manifest:
    """Reuse ``folder`` if it holds a valid export, else export the first source of ``name`` that loads."""
    from .export import export_model

    try:
        manifest = Manifest.load(folder)
        say(f"reusing {folder} ({manifest.source['model']}); delete it to export again")
        return manifest
    except ClipblipError:
        pass
    for model, task in SOURCES[name]:
        try:
            manifest = export_model(model, folder, task=task, force=folder.exists(), progress=say)
        except ModelSourceError as e:
            say(f"{model} unavailable ({e}); trying the next source")
            continue
        if manifest.random_weights:
            say(f"NOTE: {name} uses RANDOM weights ({model}); its outputs are not meaningful")
        return manifest
    raise ModelSourceError(f"none of {', '.join(m for m, _ in SOURCES[name])} could be exported")


class Timer:
    """Wall-clock seconds per named stage, for the results file."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        self.seconds[stage] = round(time.perf_counter() - start, 3)
        return result


def run_clip(out: Path, photos: list[Path], timer: Timer, say, provider: str, threads: int | None) -> dict:
    from .engine import ClipEngine
    from .viz import RANDOM_WEIGHTS_NOTE, similarity_heatmap

    manifest = timer("clip export", lambda: ensure_export("clip", out / "models" / "clip", say))
    engine = timer("clip load", lambda: ClipEngine.from_dir(out / "models" / "clip", provider=provider, threads=threads))
    ranked = timer("clip classify", lambda: engine.classify(photos, LABELS))
    similarity = timer("clip similarity", lambda: engine.similarity(photos, TEXTS))
    note = RANDOM_WEIGHTS_NOTE if manifest.random_weights else None
    similarity_heatmap(similarity, [p.name for p in photos], TEXTS, title="CLIP cosine similarity",
                       note=note).savefig(out / "clip_similarity.png", dpi=120)
    return {
        "model": manifest.source["model"],
        "random_weights": manifest.random_weights,
        "classify": [{"image": p.name, "labels": [{"label": l, "probability": pr} for l, pr in r]}
                     for p, r in zip(photos, ranked)],
        "similarity": {"images": [p.name for p in photos], "texts": list(TEXTS), "matrix": similarity.tolist()},
    }


def run_blip(out: Path, photos: list[Path], timer: Timer, say, provider: str, threads: int | None) -> dict:
    from .engine import BlipEngine
    from .viz import RANDOM_WEIGHTS_NOTE, match_heatmaps

    engines, sources = {}, {}
    for task in ("caption", "vqa", "itm"):
        manifest = timer(f"blip {task} export", lambda: ensure_export(task, out / "models" / f"blip-{task}", say))
        engines[task] = timer(f"blip {task} load", lambda: BlipEngine.from_dir(
            out / "models" / f"blip-{task}", provider=provider, threads=threads))
        sources[task] = {"model": manifest.source["model"], "random_weights": manifest.random_weights}
    captions = timer("blip caption", lambda: engines["caption"].generate_captions(photos))
    prompted = timer("blip caption with prompt",
                     lambda: engines["caption"].generate_captions(photos, prompt=CAPTION_PROMPT))
    answers = timer("blip vqa", lambda: engines["vqa"].generate_answers(photos, QUESTION))
    scores = timer("blip match", lambda: engines["itm"].match(photos, TEXTS))
    note = RANDOM_WEIGHTS_NOTE if sources["itm"]["random_weights"] else None
    match_heatmaps(scores.itm, scores.itc, [p.name for p in photos], TEXTS, note=note).savefig(
        out / "blip_match.png", dpi=120)
    return {
        "sources": sources,
        "captions": [{"image": p.name, "text": c.text, "token_ids": c.token_ids} for p, c in zip(photos, captions)],
        "prompted_captions": {"prompt": CAPTION_PROMPT, "results": [
            {"image": p.name, "text": c.text, "token_ids": c.token_ids} for p, c in zip(photos, prompted)]},
        "vqa": {"question": QUESTION, "results": [
            {"image": p.name, "text": a.text, "token_ids": a.token_ids} for p, a in zip(photos, answers)]},
        "match": {"images": [p.name for p in photos], "texts": list(TEXTS), "itm": scores.itm.tolist(),
                  "itc": scores.itc.tolist()},
    }


def summary(results: dict) -> list[str]:
    """The demo's README.md, as lines."""
    from .viz import RANDOM_WEIGHTS_NOTE

    clip, blip = results["clip"], results["blip"]
    lines = ["# clipblip demo", ""]
    models = [("CLIP", clip["model"], clip["random_weights"])] + [
        (f"BLIP {task}", s["model"], s["random_weights"]) for task, s in blip["sources"].items()]
    for label, model, random_weights in models:
        lines.append(f"- {label}: `{model}`" + (" — **RANDOM WEIGHTS**" if random_weights else ""))
    if any(r for _, _, r in models):
        lines += ["", f"**{RANDOM_WEIGHTS_NOTE}.**"]
    lines += ["", "## CLIP zero-shot classification (template: `a photo of a {}.`)", ""]
    for item in clip["classify"]:
        lines.append(f"- **{item['image']}**: " + ", ".join(
            f"{l['label']} {l['probability']:.1%}" for l in item["labels"][:3]))
    lines += ["", "![CLIP similarity](clip_similarity.png)", "", "## BLIP captions", ""]
    for plain, prompted in zip(blip["captions"], blip["prompted_captions"]["results"]):
        lines.append(f"- **{plain['image']}**: {plain['text']!r}; with the prompt: {prompted['text']!r}")
    lines += ["", f"## BLIP VQA: “{blip['vqa']['question']}”", ""]
    lines += [f"- **{a['image']}**: {a['text']!r}" for a in blip["vqa"]["results"]]
    lines += ["", "## BLIP image–text matching", "", "![BLIP match](blip_match.png)", "", "## Timings (s)", ""]
    lines += [f"- {stage}: {seconds:.2f}" for stage, seconds in results["timings_s"].items()]
    return lines


def run_demo(out: Path, progress: Callable[[str], None], provider: str = "auto", threads: int | None = None) -> dict:
    """Export (or reuse) every model, run them on the demo photos, write results into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    photos = demo_photos(out / "images")
    timer = Timer()
    results = {
        "clip": run_clip(out, photos, timer, progress, provider, threads),
        "blip": run_blip(out, photos, timer, progress, provider, threads),
        "timings_s": timer.seconds,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = summary(results)
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(line for line in lines if not line.startswith("![")))
    progress(f"results in {out}/ (README.md, results.json, clip_similarity.png, blip_match.png)")
    return results
