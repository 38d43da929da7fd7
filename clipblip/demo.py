"""`clipblip demo`: export CLIP and BLIP, run them on real photos, write results and report.html."""

from __future__ import annotations

import json
import shutil
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from .errors import ClipblipError, ExportError, ModelSourceError, OutputError
from .manifest import Manifest
from .memory import available_mb, release_memory

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
FOLDERS = {"clip": "clip", "chinese_clip": "chinese_clip", "caption": "blip-caption", "vqa": "blip-vqa",
           "itm": "blip-itm"}  # each model's folder under out/models
# The order in which the exports start, two at a time: the longest first, and the two that hold the most
# memory (VQA, 2.1 GB, and ITM, 1.7 GB) apart (measured on AMD EPYC Zen 4, 2 cores: 3.5 GB together).
EXPORT_ORDER = ("vqa", "clip", "chinese_clip", "itm", "caption")
EXPORT_MEMORY_MB = 3 * 1024  # what the system must have available per export at a time
MARKER = ".clipblip-demo"  # marks a folder the demo wrote, so that a later run may write into it again
TIMINGS_NOTE = ("The exports run first, several at a time where the machine has the cores and memory, each in a "
                "process of its own; what each export took is in its folder's manifest.json, under `export`.")
STAGES = 13  # timed stages of a run (exports, loads, runs), for the progress bar; the report is the last


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


def ensure_export(name: str, folder: Path, say: Callable[[str], None], exporter: Exporter | None = None) -> Manifest:
    """Reuse ``folder`` if it holds a valid export, else export the first source of ``name`` that loads, in the
    export process ``exporter`` (default: one of its own)."""
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
            manifest = (exporter or export_in_process)(say, model, folder, task=task, force=folder.exists(),
                                                       attentions=attentions)
        except ModelSourceError as e:
            say(f"{model} unavailable ({e}); trying the next source")
            continue
        if manifest.random_weights:
            say(f"NOTE: {name} uses RANDOM weights ({model}); its outputs are not meaningful")
        return manifest
    raise ModelSourceError(f"none of {', '.join(m for m, _ in SOURCES[name])} could be exported")


class Exporter:
    """Runs ``clipblip.export.export_model`` in a process of its own, started at the first export and ended by
    :meth:`close`: what an export allocates is the other process's, which gives it back between exports, and
    this process never loads torch (the demo's five exports in its own process held 18 GB by the last).

    ``exporter(say, model, out, **options)`` passes the export's progress to ``say`` and returns its manifest; an
    error is raised here as it was raised there. If that process dies or is stopped midway (``say`` raising),
    ExportError (or that exception) is raised and the unfinished staging folder beside ``out`` is removed."""

    def __init__(self, threads: int | None = None) -> None:
        self._process: Any = None
        self._connection: Any = None
        self._lock = threading.Lock()  # close() may come from another thread than the export's
        self.threads = threads  # each export's (export_model's ``threads``)

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        context = export_context()
        self._connection, theirs = context.Pipe()
        self._process = context.Process(target=_export_worker, args=(theirs,), name="clipblip-export", daemon=True)
        self._process.start()
        theirs.close()

    def close(self, stop: bool = False) -> None:
        """End the export process: after its current export, or at once with ``stop``."""
        with self._lock:
            process, connection = self._process, self._connection
            if process is None:
                return
            if not stop and process.is_alive():
                try:
                    connection.send(None)
                except OSError:
                    pass
                process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()
            connection.close()
            self._process = self._connection = None

    def __call__(self, say: Callable[[str], None], model: str, out: Path, **options: Any) -> Manifest:
        if self._process is None:
            self._start()
        process, connection = self._process, self._connection
        staging = f".{out.name}.partial-"  # files.staged_folder's prefix, beside ``out``
        before = {p.name for p in out.parent.glob(staging + "*")} if out.parent.is_dir() else set()
        outcome = None
        try:
            connection.send((model, str(out), {"threads": self.threads, **options}))
            while outcome is None:
                try:
                    kind, payload = connection.recv()
                except (EOFError, OSError):  # the process ended without a word, or was stopped
                    break
                if kind == "progress":
                    say(payload)
                else:
                    outcome = kind, payload
        except BaseException:
            self.close(stop=True)
            raise
        finally:
            if outcome is None or outcome[0] != "done":  # its staging folder, when it could not remove it itself
                for left in out.parent.glob(staging + "*") if out.parent.is_dir() else ():
                    if left.name not in before:
                        shutil.rmtree(left, ignore_errors=True)
        if outcome is None:
            code = process.exitcode
            self.close(stop=True)
            raise ExportError(f"{model}: the export process ended without finishing (exit code {code}); nothing "
                              f"was written to {out}")
        kind, payload = outcome
        if kind == "error":
            raise payload
        return Manifest.from_dict(payload)


def export_context() -> Any:
    """How export processes start: forked from a server process that has imported the exporter (torch,
    transformers, ONNX) once, and holds none of this process's threads or memory; a fresh interpreter each
    (3 s of imports) where forking is not there (Windows)."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["clipblip.export"])
    return context


def stop_export_server() -> None:
    """End the forkserver of :func:`export_context` (its imports hold 0.4 GB); the next export starts another."""
    from multiprocessing import forkserver

    stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)  # not public: where it is there
    if stop is not None:
        stop()


def export_in_process(say: Callable[[str], None], model: str, out: Path, **options: Any) -> Manifest:
    """One export in a process of its own (:class:`Exporter`)."""
    with Exporter() as exporter:
        return exporter(say, model, out, **options)


def export_plan(cores: int | None = None, available: float | None = None) -> tuple[int, int]:
    """(exports at a time, threads of each) on this machine: two at a time where it has 2 cores or more and
    memory available for two (``EXPORT_MEMORY_MB`` each), each with its share of the cores. On 2 cores two
    single-threaded exports of BLIP base (VQA and ITM) took 82 s together, one after another 101 s (AMD EPYC
    Zen 4): an export leaves a core idle a third of its time (tracing and the fusions are serial Python)."""
    from .engine.machine import usable_cores

    cores = cores or usable_cores()
    available = available_mb() if available is None else available
    at_once = 2 if cores >= 2 and available is not None and available >= 2 * EXPORT_MEMORY_MB else 1
    return at_once, max(1, cores // at_once)


def export_models(out: Path, say: Callable[[str], None], names: tuple[str, ...] = EXPORT_ORDER,
                  plan: tuple[int, int] | None = None) -> dict[str, Manifest]:
    """Every model's folder under ``out/models``, exported (or reused) by ``plan``'s processes (:func:`export_plan`),
    each export taking the next name in ``names``; its messages go to ``say`` behind ``[name]``. The first
    export that fails stops those not started and is raised once the others end; leaving early (Ctrl-C) stops
    every export at once, and no unfinished folder is left."""
    at_once, threads = plan or export_plan()
    exporters = [Exporter(threads) for _ in range(at_once)]
    pending, manifests, failures = list(names), {}, []
    lock = threading.Lock()

    def work(exporter: Exporter) -> None:
        while True:
            with lock:
                if failures or not pending:
                    return
                name = pending.pop(0)
            try:
                manifests[name] = ensure_export(name, out / "models" / FOLDERS[name],
                                                lambda message: say(f"[{name}] {message}"), exporter)
            except BaseException as e:  # raised in the caller's thread, below
                with lock:
                    failures.append(e)
                return

    workers = [threading.Thread(target=work, args=(e,), name=f"clipblip-export-{i}", daemon=True)
               for i, e in enumerate(exporters)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            while worker.is_alive():  # woken twice a second: Ctrl-C is seen even where another thread received it
                worker.join(0.5)
    except BaseException:
        with lock:
            pending.clear()
        for exporter in exporters:
            exporter.close(stop=True)  # at once: the worker's export ends, its staging folder is removed
        for worker in workers:
            worker.join()
        raise
    finally:
        for exporter in exporters:
            exporter.close()
    if failures:
        raise failures[0]
    return manifests


def _export_worker(connection: Any) -> None:
    """The export process: for each (model, out, options) received, progress, then ("done", the manifest as a
    dict) or ("error", the exception); ends on None."""
    from .export import export_model

    while (job := connection.recv()) is not None:
        model, out, options = job
        try:
            manifest = export_model(model, out, progress=lambda m: connection.send(("progress", m)), **options)
            release_memory(collect=True)  # back to what the libraries hold before the next export
            connection.send(("done", manifest.to_dict()))
        except Exception as e:  # sent back to be raised in the demo, whatever it is
            if not isinstance(e, ClipblipError):
                e.add_note(f"in the export process:\n{traceback.format_exc()}")
            try:
                connection.send(("error", e))
            except Exception:  # an exception that cannot be pickled: its type and message
                connection.send(("error", ExportError(f"{model}: {type(e).__name__}: {e}")))
    connection.close()


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
             sections: list, manifests: dict[str, Manifest]) -> dict:
    from . import viz
    from .engine import ClipEngine

    manifest = manifests["clip"]
    engine = timer("clip load", lambda: ClipEngine.from_dir(out / "models" / FOLDERS["clip"], provider=provider,
                                                            threads=threads))
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
                     sections: list, manifests: dict[str, Manifest]) -> dict:
    """Zero-shot classification with Chinese labels, in Chinese-CLIP's own prompt."""
    from . import viz
    from .engine import ChineseClipEngine

    folder, manifest = out / "models" / FOLDERS["chinese_clip"], manifests["chinese_clip"]
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
             sections: list, manifests: dict[str, Manifest]) -> dict:
    """Captions, answers and matches, one BLIP model loaded at a time (each is let go before the next loads)."""
    from . import viz
    from .engine import BlipEngine

    sources, notes = {}, {}

    def load(task: str) -> BlipEngine:
        manifest = manifests[task]
        sources[task] = {"model": manifest.source["model"], "random_weights": manifest.random_weights}
        notes[task] = viz.RANDOM_WEIGHTS_NOTE if manifest.random_weights else None
        return timer(f"blip {task} load", lambda: BlipEngine.from_dir(out / "models" / FOLDERS[task],
                                                                      provider=provider, threads=threads))

    engine = load("caption")  # each model is let go, and the memory it held given back, before the next loads
    captions = timer("blip caption", lambda: engine.generate_captions(photos))
    prompted = timer("blip caption with prompt", lambda: engine.generate_captions(photos, prompt=CAPTION_PROMPT))
    views = [engine.preprocess.view(p) for p in photos]
    grid = engine.manifest.model["patch_grid"]
    explained = [engine.caption_attentions(p) for p in photos]
    del engine
    release_memory()
    engine = load("vqa")
    answers = timer("blip vqa", lambda: engine.generate_answers(photos, QUESTION))
    del engine
    release_memory()
    engine = load("itm")
    scores = timer("blip match", lambda: engine.match(photos, TEXTS))
    del engine
    release_memory()
    heatmaps = viz.match_heatmaps(scores.itm, scores.itc, [p.name for p in photos], TEXTS, note=notes["itm"],
                                  images=views)
    heatmaps.savefig(out / "blip_match.png", dpi=120)
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
    lines += ["", "## BLIP image–text matching", "", "![BLIP match](blip_match.png)", "", "## Timings (s)", "", TIMINGS_NOTE, ""]
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
    lock = threading.Lock()  # the exports' messages come from their threads

    def say(message: str) -> None:
        with lock:
            progress(message)

    # every export first, none beside a model's run: on 2 cores an export beside BLIP's runs took 1.5 times as long
    manifests = timer("exports", lambda: export_models(out, say))
    stop_export_server()
    results = {}
    for name, run in (("clip", run_clip), ("chinese_clip", run_chinese_clip), ("blip", run_blip)):
        results[name] = run(out, photos, timer, progress, provider, threads, sections, manifests)
        release_memory()  # what the model's engine held (0.75 GB after CLIP's, 0.18 once given back)
    results["timings_s"] = timer.seconds
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = summary(results)
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sources = {label: source["model"] for label, source in model_sources(results).items()}
    random_weights = any(source["random_weights"] for source in model_sources(results).values())
    viz.report.write_report(out / "report.html", title="clipblip demo", sources=sources,
                            random_weights=random_weights, sections=sections, timings=timer.seconds,
                            timings_note=TIMINGS_NOTE)
    if steps is not None:
        steps(STAGES + 1, STAGES + 1)
    print("\n".join(line for line in lines if not line.startswith("![")))
    progress(f"results in {out}/: report.html (open it in a browser), README.md, results.json, *.png")
    return results
