"""`clipblip demo`: export CLIP, then classify and compare real photos; results go into one folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from .errors import ClipblipError, ModelSourceError
from .manifest import Manifest

CLIP_CHECKPOINT = "openai/clip-vit-base-patch32"
CLIP_FALLBACK = "random:clip-base"
PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
LABELS = ("woman in a naval uniform", "man in a suit", "cat", "dog", "blue gift box", "city skyline")
CAPTIONS = ("a portrait of a woman in uniform", "a blue box of coloured pencils", "a photo of a cat")


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


def ensure_export(candidates: tuple[str, ...], folder: Path, say: Callable[[str], None]) -> Manifest:
    """Reuse ``folder`` if it holds a valid export, else export the first candidate that loads."""
    from .export import export_model

    try:
        manifest = Manifest.load(folder)
        say(f"reusing {folder} ({manifest.source['model']}); delete it to export again")
        return manifest
    except ClipblipError:
        pass
    for candidate in candidates:
        try:
            return export_model(candidate, folder, force=folder.exists(), progress=say)
        except ModelSourceError as e:
            say(f"{candidate} unavailable ({e}); trying the next source")
    raise ModelSourceError(f"none of {', '.join(candidates)} could be exported")


def run_demo(out: Path, progress: Callable[[str], None], provider: str = "auto", threads: int | None = None) -> None:
    from .engine import ClipEngine
    from .viz import RANDOM_WEIGHTS_NOTE, similarity_heatmap

    out.mkdir(parents=True, exist_ok=True)
    photos = demo_photos(out / "images")
    manifest = ensure_export((CLIP_CHECKPOINT, CLIP_FALLBACK), out / "models" / "clip", progress)
    random_weights = manifest.random_weights
    if random_weights:
        progress("NOTE: using RANDOM weights (no CLIP checkpoint in the local cache); results are not meaningful")

    engine = ClipEngine.from_dir(out / "models" / "clip", provider=provider, threads=threads)
    progress(f"CLIP loaded on {engine.providers[0]}")
    ranked = engine.classify(photos, LABELS)
    similarity = engine.similarity(photos, CAPTIONS)

    note = RANDOM_WEIGHTS_NOTE if random_weights else None
    fig = similarity_heatmap(similarity, [p.name for p in photos], CAPTIONS, title="CLIP cosine similarity", note=note)
    fig.savefig(out / "clip_similarity.png", dpi=120)
    results = {
        "model": manifest.source["model"],
        "random_weights": random_weights,
        "classify": [{"image": p.name, "labels": [{"label": l, "probability": pr} for l, pr in r]}
                     for p, r in zip(photos, ranked)],
        "similarity": {"images": [p.name for p in photos], "texts": list(CAPTIONS), "matrix": similarity.tolist()},
    }
    (out / "clip_results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    lines = [f"# clipblip demo", "", f"CLIP model: `{manifest.source['model']}`", ""]
    if random_weights:
        lines += [f"**{RANDOM_WEIGHTS_NOTE}.**", ""]
    lines += ["## Zero-shot classification (template: `a photo of a {}.`)", ""]
    for p, r in zip(photos, ranked):
        lines.append(f"- **{p.name}**: " + ", ".join(f"{l} {pr:.1%}" for l, pr in r[:3]))
    lines += ["", "## Similarity", "", "![similarity](clip_similarity.png)", ""]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines[4:] if not random_weights else lines[2:]))
    progress(f"results in {out}/ (README.md, clip_results.json, clip_similarity.png)")
