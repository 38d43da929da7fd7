"""`clipblip demo`: export CLIP and BLIP, run them on real photos, write results and report.html."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from .errors import ClipblipError, ModelSourceError, OutputError
from .manifest import Manifest

# Per model: the real checkpoint (used when the Hub or the local cache has it), then the random preset.
# CLIP and the caption model are exported with attention weights, for the report's attention figures.
SOURCES: dict[str, tuple[tuple[str, str | None], ...]] = {
    "clip": (("openai/clip-vit-base-patch32", None), ("random:clip-base", None)),
    "chinese_clip": (("OFA-Sys/chinese-clip-vit-base-patch16", None), ("random:chinese-clip-base", None)),
    "caption": (("Salesforce/blip-image-captioning-base", "caption"), ("random:blip-base", "caption")),
    "vqa": (("Salesforce/blip-vqa-base", "vqa"), ("random:blip-base", "vqa")),
    "itm": (("Salesforce/blip-itm-base-coco", "itm"), ("random:blip-base", "itm")),
}
PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
LABELS = ("woman in a naval uniform", "man in a suit", "cat", "dog", "blue gift box", "city skyline")
TEXTS = ("a portrait of a woman in uniform", "a blue box of coloured pencils", "a photo of a cat")
CAPTION_PROMPT = "a picture of"
QUESTION = "what is in the picture?"
CHINESE_LABELS = ("猫", "狗", "汽车", "穿制服的女人", "蓝色的礼盒")  # cat, dog, car, woman in uniform, blue gift box
WITH_ATTENTIONS = ("clip", "caption")
MARKER = ".clipblip-demo"  # marks a folder the demo wrote, so that a later run may write into it again
STAGES = 17  # timed stages of a run (exports, loads, runs), for the progress bar; the report is the last


def prepare_folder(out: Path) -> None:
    """Use ``out`` only if it is new, empty, or an earlier demo's: the demo never writes over other files."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file; the demo writes into a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and not earlier_demo(out):
        raise OutputError(f"{out}: a folder with other files in it; the demo writes only into a new or empty "
                          f"folder, or one an earlier demo wrote (choose another --out)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("written by `clipblip demo`; it may write here again\n", encoding="utf-8")
    except OSError as e:
        raise OutputError(f"{out}: cannot be written ({e.strerror or e})") from None


def earlier_demo(out: Path) -> bool:
    """A folder from a demo of a clipblip that wrote no marker yet: its results.json has the demo's keys."""
    try:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
        return isinstance(results, dict) and {"clip", "blip", "timings_s"} <= set(results)
    except (OSError, ValueError):
        return False


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

    attentions = name in WITH_ATTENTIONS
    try:
        manifest = Manifest.load(folder)
        if manifest.source.get("attentions", False) >= attentions:
            say(f"reusing {folder} ({manifest.source['model']}); delete it to export again")
            return manifest
    except ClipblipError:
        pass
    for model, task in SOURCES[name]:
        try:
            manifest = export_model(model, folder, task=task, force=folder.exists(), attentions=attentions,
                                    progress=say)
        except ModelSourceError as e:
            say(f"{model} unavailable ({e}); trying the next source")
            continue
        if manifest.random_weights:
            say(f"NOTE: {name} uses RANDOM weights ({model}); its outputs are not meaningful")
        return manifest
    raise ModelSourceError(f"none of {', '.join(m for m, _ in SOURCES[name])} could be exported")


class Timer:
    """Wall-clock seconds per named stage, for the results file; ``steps(done, total)`` after each."""

    def __init__(self, steps: Callable[[int, int], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.steps = steps

    def __call__(self, stage: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        self.seconds[stage] = round(time.perf_counter() - start, 3)
        if self.steps is not None:
            self.steps(len(self.seconds), STAGES + 1)
        return result


def run_clip(out: Path, photos: list[Path], timer: Timer, say, provider: str, threads: int | None,
             sections: list) -> dict:
    from . import viz
    from .engine import ClipEngine

    manifest = timer("clip export", lambda: ensure_export("clip", out / "models" / "clip", say))
    engine = timer("clip load", lambda: ClipEngine.from_dir(out / "models" / "clip", provider=provider, threads=threads))
    ranked = timer("clip classify", lambda: engine.classify(photos, LABELS))
    similarity = timer("clip similarity", lambda: engine.similarity(photos, TEXTS))
    note = viz.RANDOM_WEIGHTS_NOTE if manifest.random_weights else None
    views = [engine.preprocess.view(p) for p in photos]
    names = [p.name for p in photos]
    heatmap = viz.similarity_heatmap(similarity, names, TEXTS, title="CLIP cosine similarity", note=note, images=views)
    heatmap.savefig(out / "clip_similarity.png", dpi=120)
    grid = manifest.model["patch_grid"]
    tokens, text_attention = engine.text_attentions(TEXTS[0])
    sections.append(viz.report.Section(
        f"CLIP ({manifest.source['model']})",
        [f"{p.name}: " + ", ".join(f"{l} {pr:.1%}" for l, pr in r[:3]) for p, r in zip(photos, ranked)],
        [("Zero-shot classification, template 'a photo of a {}.'", viz.topk_bars(views, ranked, note=note)),
         ("Image × text cosine similarity", heatmap)]
        + [(f"Class-token attention over patches, every layer and the rollout: {p.name}",
            viz.image_attention_figure(v, engine.image_attentions(p), grid, note=note)) for p, v in zip(photos, views)]
        + [(f"Text self-attention per layer and head: {TEXTS[0]!r}",
            viz.token_attention_figure(text_attention, tokens, title="CLIP text self-attention", note=note))],
    ))
    return {
        "model": manifest.source["model"],
        "random_weights": manifest.random_weights,
        "classify": [{"image": p.name, "labels": [{"label": l, "probability": pr} for l, pr in r]}
                     for p, r in zip(photos, ranked)],
        "similarity": {"images": [p.name for p in photos], "texts": list(TEXTS), "matrix": similarity.tolist()},
    }


def run_chinese_clip(out: Path, photos: list[Path], timer: Timer, say, provider: str, threads: int | None,
                     sections: list) -> dict:
    """Zero-shot classification with Chinese labels, in Chinese-CLIP's own prompt."""
    from . import viz
    from .engine import ChineseClipEngine

    folder = out / "models" / "chinese_clip"
    manifest = timer("chinese-clip export", lambda: ensure_export("chinese_clip", folder, say))
    engine = timer("chinese-clip load", lambda: ChineseClipEngine.from_dir(folder, provider=provider, threads=threads))
    ranked = timer("chinese-clip classify", lambda: engine.classify(photos, CHINESE_LABELS))
    note = viz.RANDOM_WEIGHTS_NOTE if manifest.random_weights else None
    views = [engine.preprocess.view(p) for p in photos]
    sections.append(viz.report.Section(
        f"Chinese-CLIP ({manifest.source['model']})",
        [f"{p.name}: " + ", ".join(f"{l} {pr:.1%}" for l, pr in r[:3]) for p, r in zip(photos, ranked)],
        [(f"Zero-shot classification with Chinese labels, template {engine.prompt_template!r} (softmax over the "
          f"labels)", viz.topk_bars(views, ranked, note=note))],
    ))
    return {
        "model": manifest.source["model"],
        "random_weights": manifest.random_weights,
        "template": engine.prompt_template,
        "classify": [{"image": p.name, "labels": [{"label": l, "probability": pr} for l, pr in r]}
                     for p, r in zip(photos, ranked)],
    }


def run_blip(out: Path, photos: list[Path], timer: Timer, say, provider: str, threads: int | None,
             sections: list) -> dict:
    from . import viz
    from .engine import BlipEngine

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
    notes = {task: viz.RANDOM_WEIGHTS_NOTE if s["random_weights"] else None for task, s in sources.items()}
    views = [engines["caption"].preprocess.view(p) for p in photos]
    heatmaps = viz.match_heatmaps(scores.itm, scores.itc, [p.name for p in photos], TEXTS, note=notes["itm"],
                                  images=views)
    heatmaps.savefig(out / "blip_match.png", dpi=120)
    caption_engine, grid = engines["caption"], engines["caption"].manifest.model["patch_grid"]
    explained = [caption_engine.caption_attentions(p) for p in photos]
    sections.append(viz.report.Section(
        f"BLIP captions ({sources['caption']['model']})",
        [f"{p.name}: {c.text!r}; with the prompt {CAPTION_PROMPT!r}: {q.text!r}"
         for p, c, q in zip(photos, captions, prompted)],
        [("Captions", viz.caption_gallery(views, [c.text for c in captions], note=notes["caption"]))]
        + [(f"Cross-attention per generated word: {p.name}",
            viz.cross_attention_figure(v, e.words, e.cross_attention, grid, caption=e.generation.text,
                                       note=notes["caption"])) for p, v, e in zip(photos, views, explained)]
        + [(f"Decoder self-attention over the caption of {photos[0].name} (last layer, mean of heads)",
            viz.token_attention_figure(explained[0].self_attention, explained[0].tokens,
                                       layer=explained[0].self_attention.shape[0] - 1,
                                       title="BLIP decoder self-attention", note=notes["caption"]))],
    ))
    sections.append(viz.report.Section(
        f"BLIP visual question answering ({sources['vqa']['model']})",
        [f"{p.name}: {QUESTION} → {a.text!r}" for p, a in zip(photos, answers)],
        [("Question → answer", viz.vqa_gallery(views, [QUESTION] * len(photos), [a.text for a in answers],
                                               note=notes["vqa"]))],
    ))
    sections.append(viz.report.Section(f"BLIP image–text matching ({sources['itm']['model']})", [],
                                       [("ITM match probability and ITC cosine similarity", heatmaps)]))
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


def model_sources(results: dict) -> dict[str, dict]:
    """Per model of the demo, by its label: the results holding its ``model`` and ``random_weights``."""
    return {"CLIP": results["clip"], "Chinese-CLIP": results["chinese_clip"],
            **{f"BLIP {task}": source for task, source in results["blip"]["sources"].items()}}


def top3(classified: list[dict]) -> list[str]:
    """A line per image: its three most probable labels."""
    return [f"- **{item['image']}**: " + ", ".join(f"{l['label']} {l['probability']:.1%}" for l in item["labels"][:3])
            for item in classified]


def summary(results: dict) -> list[str]:
    """The demo's README.md, as lines."""
    from .viz import RANDOM_WEIGHTS_NOTE

    clip, chinese, blip = results["clip"], results["chinese_clip"], results["blip"]
    lines = ["# clipblip demo", ""]
    for label, source in model_sources(results).items():
        flag = " — **RANDOM WEIGHTS**" if source["random_weights"] else ""
        lines.append(f"- {label}: `{source['model']}`{flag}")
    if any(source["random_weights"] for source in model_sources(results).values()):
        lines += ["", f"**{RANDOM_WEIGHTS_NOTE}.**"]
    lines += ["", "## CLIP zero-shot classification (template: `a photo of a {}.`)", "", *top3(clip["classify"])]
    lines += ["", "![CLIP similarity](clip_similarity.png)", "",
              f"## Chinese-CLIP zero-shot classification (template: `{chinese['template']}`)", "",
              *top3(chinese["classify"])]
    lines += ["", "## BLIP captions", ""]
    for plain, prompted in zip(blip["captions"], blip["prompted_captions"]["results"]):
        lines.append(f"- **{plain['image']}**: {plain['text']!r}; with the prompt: {prompted['text']!r}")
    lines += ["", f"## BLIP VQA: “{blip['vqa']['question']}”", ""]
    lines += [f"- **{a['image']}**: {a['text']!r}" for a in blip["vqa"]["results"]]
    lines += ["", "## BLIP image–text matching", "", "![BLIP match](blip_match.png)", "", "## Timings (s)", ""]
    lines += [f"- {stage}: {seconds:.2f}" for stage, seconds in results["timings_s"].items()]
    return lines


def run_demo(out: Path, progress: Callable[[str], None], provider: str = "auto", threads: int | None = None,
             steps: Callable[[int, int], None] | None = None) -> dict:
    """Export (or reuse) every model, run them on the demo photos, write results into ``out`` (a new or
    empty folder, or an earlier demo's). ``steps(done, total)`` follows the stages."""
    from . import viz

    prepare_folder(out)
    photos = demo_photos(out / "images")
    timer = Timer(steps)
    sections = [viz.report.Section("Self-attention, step by step (toy example)", [
        "Rows are the tokens that look, columns the tokens looked at; each row of weights sums to 1."],
        [("Scaled dot-product attention on a Chinese sentence, 'I like kittens and puppies' (random "
          "embeddings and weights, seed 0)",
          viz.toy_attention_figure())])]
    results = {
        "clip": run_clip(out, photos, timer, progress, provider, threads, sections),
        "chinese_clip": run_chinese_clip(out, photos, timer, progress, provider, threads, sections),
        "blip": run_blip(out, photos, timer, progress, provider, threads, sections),
        "timings_s": timer.seconds,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = summary(results)
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sources = {label: source["model"] for label, source in model_sources(results).items()}
    random_weights = any(source["random_weights"] for source in model_sources(results).values())
    viz.report.write_report(out / "report.html", title="clipblip demo", sources=sources,
                            random_weights=random_weights, sections=sections, timings=timer.seconds)
    if steps is not None:
        steps(STAGES + 1, STAGES + 1)
    print("\n".join(line for line in lines if not line.startswith("![")))
    progress(f"results in {out}/: report.html (open it in a browser), README.md, results.json, *.png")
    return results
