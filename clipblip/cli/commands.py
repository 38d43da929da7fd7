"""The commands: export, verify, embed, similarity, classify, caption, vqa, match, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..families import title as family_title
from .common import (RANDOM_BANNER, check_argument_order, check_figure_paths, format_table, open_engine, print_json,
                     save_figure, unknown_texts_warning, warn)
from ..inputs import distinct_names, expand_images
from .items import ItemRun, report_errors, run_items
from .progress import ProgressBar


def cmd_export(args: argparse.Namespace) -> int:
    from ..engine.checks import summary
    from ..engine.session import has_copy
    from ..export import export_model

    with ProgressBar(0, "export") as bar:
        manifest = export_model(args.model, args.out, task=args.task, opset=args.opset, force=args.force,
                                attentions=args.attentions, precision=args.precision, optimize=args.optimize,
                                allow_pickle=args.allow_pickle, progress=bar, steps=bar.update,
                                threads=args.threads, towers=args.towers,
                                calibration=args.calibration)
    if manifest.random_weights:
        print(RANDOM_BANNER, file=sys.stderr)
    for name, graph in manifest.graphs.items():
        line = f"{name}: {graph.file}  {graph.precision}  max |ONNX - PyTorch| (fp32) = {graph.parity['max_abs_diff']:.2e}"
        if graph.optimization.get("applied"):
            line += f"  fused {graph.optimization['fused']}"
        if graph.accuracy:
            line += f"  {graph.accuracy['precision_tried']} gate {'passed' if graph.accuracy['passed'] else 'FAILED'}"
            line += f" ({graph.accuracy.get('reason') or summary(graph.accuracy)})"
        for backend, entry in graph.backends.items():
            what = f"{entry.get('file') or graph.file} ({entry.get('weights')} weights, {entry.get('inference')})"
            if has_copy(entry):
                record = entry["accuracy"]
                line += f"  {backend} runs {what}, " + (f"gate passed ({summary(record)})" if "measured" in record
                                                        else record.get("reason", ""))
            else:
                line += f"  no {backend} copy ({entry.get('reason')})"
        print(line)
    if manifest.one_tower is not None:
        print(f"towers: the {manifest.one_tower} tower alone; the folder does {', '.join(manifest.tasks)}")
    cost = manifest.export
    peak = f", peak {cost['peak_rss_mb'] / 1024:.2f} GB resident" if cost.get("peak_rss_mb") else ""
    print(f"export: {cost['seconds']:.0f} s ({cost['cpu_seconds']:.0f} s CPU){peak}; each step's in "
          f"{Path(args.out) / 'manifest.json'} (export)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..engine.checks import summary, verify_folder
    from ..engine.machine import this_machine
    from ..errors import AccuracyError

    results = verify_folder(args.model_dir, provider=args.provider, threads=args.threads)
    machine = this_machine()
    failed = [r["graph"] for r in results if not r["passed"]]
    if args.json:
        print_json({"model": str(args.model_dir), "machine": machine.to_dict(), "provider": args.provider,
                    "passed": not failed, "failed": failed, "results": results})
    else:
        cpu = f"{machine.cpu} [{' '.join(machine.flags)}]"
        for r in results:
            # graph, precision, provider, CPU, measured agreement and gate, pass/fail
            print(f"{r['graph']}  {r['precision']}  {r['provider']}  {cpu}  {summary(r)}  "
                  f"{'pass' if r['passed'] else 'FAIL'}")
    if failed:
        raise AccuracyError(f"{args.model_dir}: {', '.join(failed)} fail{'s' if len(failed) == 1 else ''} "
                            f"on this machine ({machine.describe()}); the engine refuses "
                            f"{'it' if len(failed) == 1 else 'them'} here")
    return 0


def image_paths(args: argparse.Namespace, attribute: str = "images", option: str = "IMAGE") -> list[str]:
    """The command's image arguments with folders and patterns expanded; skipped files are counted. A model
    folder among them, with DIR no model folder, is named as a swap."""
    check_argument_order(args, getattr(args, attribute), option)
    found = expand_images(getattr(args, attribute), option)
    if found.skipped:
        print(f"clipblip: skipped {found.skipped} file{'s' * (found.skipped != 1)} that are not images "
              f"(by their extension)", file=sys.stderr)
    return found.paths


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from ..files import MARK, NPZ_MARK, atomic_output, check_output, remember_written

    if bool(args.images) == bool(args.texts):
        raise UsageError("embed: give either --images or --texts")
    if args.out is None and not args.json:
        raise UsageError("embed: give --out FILE.npy or FILE.npz, or --json to print the embeddings")
    if args.out is not None:
        if Path(args.out).suffix.lower() not in (".npy", ".npz"):
            raise UsageError(f"--out {args.out}: embed writes .npy (the matrix alone) or .npz (the embeddings with "
                             f"the names of their items); give a name ending in one of them")
        check_output(args.out, args.force)  # before any work
    modality = "image" if args.images else "text"
    items = image_paths(args, "images", "--images") if args.images else args.texts
    engine = open_engine(args, "embed")
    embed = engine.embed_images if args.images else engine.embed_texts
    run = run_items(items, args.max_batch, lambda part: embed(part, return_errors=True), f"embed {modality}s")
    warn(run, [args.texts and unknown_texts_warning(engine.tokenizer, engine.folder, args.texts)])
    ok = [i for i in range(run.done) if i not in run.errors]
    embeddings = np.stack([run.results[i] for i in ok]) if ok else np.zeros((0, engine.embed_dim), np.float32)
    if args.json:
        print_json({"model": str(args.model_dir), "random_weights": engine.manifest.random_weights,
                    "modality": modality, "dim": engine.embed_dim, "interrupted": run.interrupted,
                    "results": [{"index": i, modality: str(item), **run.item(
                        i, **({} if run.results[i] is None else {"embedding": run.results[i].tolist()}))}
                                for i, item in enumerate(items)]})
    report_errors(run, items, args.debug)
    if args.out is not None:
        if not ok:
            print(f"clipblip: no {modality} was embedded; {args.out} not written", file=sys.stderr)
        else:
            matrix_only = Path(args.out).suffix.lower() == ".npy"
            with atomic_output(args.out, args.force) as tmp, open(tmp, "wb") as f:
                if matrix_only:
                    np.save(f, embeddings)
                else:
                    np.savez(f, embeddings=embeddings, items=np.array([str(items[i]) for i in ok]),
                             indices=np.array(ok, dtype=np.int64), modality=np.array(modality),
                             model=np.array(str(args.model_dir)), **{NPZ_MARK: np.array(MARK)})
            if matrix_only:
                remember_written(args.out)
            failed = ""
            if len(ok) < len(items):
                missing = ", ".join(f"{i} ({items[i]})" for i in sorted(run.errors))
                failed = f"; no row for item(s) {missing}: see the errors above"
            what = "in input order" if matrix_only else f"with their {modality}s"
            print(f"wrote {args.out}: {embeddings.shape[0]} x {embeddings.shape[1]} float32 embeddings (rows "
                  f"L2-normalised) {what}{failed}", file=sys.stderr)
    return run.exit_code


def ranked_texts(row, texts: list[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` best texts of one similarity row, best first."""
    order = sorted(range(len(texts)), key=lambda j: -row[j])[:k]
    return [{"index": j, "text": texts[j], "score": float(row[j])} for j in order]


def cmd_similarity(args: argparse.Namespace) -> int:
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k {args.top_k}: must be at least 1")
    check_figure_paths(args.force, args.plot)
    images = image_paths(args, "images", "--images")
    engine = open_engine(args, "similarity")
    run = run_items(images, args.max_batch, lambda part: engine.similarity(part, args.texts, return_errors=True),
                    "similarity")
    warn(run, [unknown_texts_warning(engine.tokenizer, engine.folder, args.texts)])
    names = distinct_names(images)
    ok = [i for i in range(run.done) if i not in run.errors]
    k = args.top_k or len(args.texts)
    if args.json:
        document = {"model": str(args.model_dir), "random_weights": engine.manifest.random_weights,
                    "images": images, "texts": args.texts, "similarity": run.rows(),
                    "errors": run.error_list(images), "interrupted": run.interrupted}
        if args.top_k:
            document["top_k"] = [None if r is None else ranked_texts(r, args.texts, k) for r in run.results]
        print_json(document)
    elif args.top_k:
        for i in ok:
            print(images[i])
            for hit in ranked_texts(run.results[i], args.texts, k):
                print(f"  {hit['score']:7.3f}  {hit['text'] if hit['text'].strip() else repr(hit['text'])}")
    elif ok:
        print(format_table([names[i] for i in ok], args.texts, [run.results[i] for i in ok]))
    report_errors(run, images, args.debug)
    if args.plot and ok:  # after the results are out: a figure that fails to write loses nothing else
        from ..viz import RANDOM_WEIGHTS_NOTE, similarity_heatmap

        note = RANDOM_WEIGHTS_NOTE if engine.manifest.random_weights else None
        views = [engine.preprocess.view(images[i]) for i in ok]
        fig = similarity_heatmap([run.results[i] for i in ok], [names[i] for i in ok], args.texts,
                                 title=f"{family_title(engine.manifest.family)} cosine similarity", note=note,
                                 images=views)
        save_figure(fig, args.plot, args.force)
    return run.exit_code


def label_warning(labels: list[str], scoring: str) -> str | None:
    """What is likely a mistake in the labels: one label under a softmax, commas between labels."""
    separate = "as separate arguments (--labels cat dog \"traffic light\"), without commas"
    if len(labels) == 1 and scoring == "softmax":
        return (f"--labels {labels[0]!r}: one label; a softmax over one label is always 100%: give the labels to "
                f"choose between" + (f", {separate}" if "," in labels[0] else ""))
    commas = [label for label in labels if label.endswith(",")]
    if commas:
        return f"--labels {', '.join(map(repr, commas))}: a comma is part of the label; give labels {separate}"
    return None


SCORING_WORDS = {"softmax": "softmax over the labels (they sum to 1)",
                 "sigmoid": "each label on its own, a sigmoid (they need not sum to 1)"}


def cmd_classify(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise UsageError(f"--top-k {args.top_k}: must be at least 1")
    images = image_paths(args)
    engine = open_engine(args, "classify")
    template = engine.prompt_template if args.template is None else args.template
    run = run_items(images, args.max_batch,
                    lambda part: engine.classify(part, args.labels, template, return_errors=True), "classify")
    warn(run, [unknown_texts_warning(engine.tokenizer, engine.folder, args.labels, "label"),
               label_warning(args.labels, engine.scoring)])
    if args.json:
        print_json({"model": str(args.model_dir), "random_weights": engine.manifest.random_weights,
                    "template": template, "scoring": engine.scoring, "interrupted": run.interrupted,
                    "results": [{"image": image, **run.item(i, labels=[{"label": l, "probability": p}
                                                                       for l, p in run.results[i] or []])}
                                for i, image in enumerate(images)]})
    else:
        if run.done > len(run.errors):
            print(f"probability: {SCORING_WORDS[engine.scoring]}; template {template!r}")
        for i, image in enumerate(images[: run.done]):
            if i not in run.errors:
                print(image)
                for label, prob in run.results[i][: args.top_k]:
                    print(f"  {prob:7.2%}  {label if label.strip() else repr(label)}")
    report_errors(run, images, args.debug)
    return run.exit_code


# BLIP's own decoding (Li et al. 2022; configs/caption_coco.yaml and models/blip_vqa.py): beam search with
# 3 beams; lengths as transformers counts them, the decoder's prompt included
PAPER = {"caption": {"num_beams": 3, "max_length": 20, "min_length": 5},
         "vqa": {"num_beams": 3, "max_length": 10, "min_length": 1}}


def decoding(args: argparse.Namespace, engine, task: str, prompt_len: int) -> dict[str, Any]:
    """The decoding keywords the command line gives (checked now, before any work): explicit options
    over ``--preset``; what neither sets comes from the checkpoint's config in the engine."""
    from ..engine.generate import OPTION_NAMES

    given = {name: getattr(args, name) for name in OPTION_NAMES}
    max_new_tokens = args.max_new_tokens
    if args.preset == "paper":
        paper = PAPER[task]
        given["num_beams"] = given["num_beams"] or paper["num_beams"]
        if given["min_new_tokens"] is None:
            given["min_new_tokens"] = max(0, paper["min_length"] - prompt_len)
        if max_new_tokens is None:
            max_new_tokens = paper["max_length"] - prompt_len
    engine.generation_options(prompt_len, max_new_tokens, **given)  # GenerationConfigError naming the option
    return {"max_new_tokens": max_new_tokens, **given}


def generation_fields(generation) -> dict[str, Any]:
    fields = {"text": generation.text, "token_ids": generation.token_ids, "prompt_ids": generation.prompt_ids}
    if generation.score is not None:
        fields["score"] = generation.score
    return fields


def print_generations(args: argparse.Namespace, images: list[str], engine, run: ItemRun, extra: dict[str, Any]) -> int:
    if args.json:
        print_json({"model": str(args.model_dir), "random_weights": engine.manifest.random_weights, **extra,
                    "interrupted": run.interrupted,
                    "results": [{**source(image), **run.item(i, **(run.results[i] and generation_fields(
                        run.results[i]) or {}))} for i, image in enumerate(images)]})
    else:
        for i, image in enumerate(images[: run.done]):
            if i not in run.errors:
                print(f"{image}: {run.results[i].text}")
    report_errors(run, images, args.debug)
    return run.exit_code


def source(item) -> dict[str, Any]:
    """What an input was, for --json: ``{"image": PATH}``, or ``{"video": PATH, "at": SECONDS}``."""
    from .video import Moment

    return {"video": item.video, "at": item.at} if isinstance(item, Moment) else {"image": str(item)}


def cmd_caption(args: argparse.Namespace) -> int:
    from .video import caption_every, check_subtitle_output, media_items, with_frames, write_subtitles

    paths = image_paths(args)
    check_subtitle_output(args)
    images = media_items(args, paths) if args.every is None else paths
    engine = open_engine(args, "caption")  # a wrong folder, prompt or option fails before any work
    options = decoding(args, engine, "caption", len(engine.caption_prompt(args.prompt)))
    if args.every is not None:
        video, timed = caption_every(args, paths, engine, lambda frames: [g.text for g in engine.generate_captions(
            frames, prompt=args.prompt, **options)])
        if args.out is not None:  # (open_engine said it once if the weights are random)
            write_subtitles(args, timed, engine.manifest.random_weights)
        if args.json:
            print_json({"model": str(args.model_dir), "random_weights": engine.manifest.random_weights,
                        "video": video, "every": args.every, "prompt": args.prompt, "captions": timed})
        else:
            from ..video import clock

            for entry in timed:
                print(f"{clock(entry['start'])}–{clock(entry['end'])}  {entry['text']}")
        return 0
    run = run_items(images, args.max_batch, with_frames(lambda part: engine.generate_captions(
        part, prompt=args.prompt, return_errors=True, **options)), "caption")
    warn(run, [args.prompt and unknown_texts_warning(engine.tokenizer, engine.folder, [args.prompt], "--prompt")])
    return print_generations(args, images, engine, run, {"prompt": args.prompt})


def print_rankings(args: argparse.Namespace, images: list[str], engine, run: ItemRun) -> int:
    """vqa --candidates: per image its best answer, then every candidate with its log-likelihood."""
    if args.json:
        print_json({"model": str(args.model_dir), "random_weights": engine.manifest.random_weights,
                    "question": args.question, "candidates": args.candidates, "interrupted": run.interrupted,
                    "results": [{**source(image), **run.item(i, **(run.results[i] is not None and {
                        "ranking": [{"answer": a, "score": s} for a, s in run.results[i]]} or {}))}
                        for i, image in enumerate(images)]})
    else:
        if run.done > len(run.errors):
            print("score: each answer's log-likelihood given the image and question (its tokens' log-probabilities, "
                  "end token included, summed: at most 0, higher is likelier)")
        for i, image in enumerate(images[: run.done]):
            if i not in run.errors:
                (best, score), width = run.results[i][0], max(len(a) for a, _ in run.results[i])
                print(f"{image}: {best} (log-likelihood {score:.4f})")
                for answer, score in run.results[i]:
                    print(f"  {answer:<{width}}  {score:.4f}")
    report_errors(run, images, args.debug)
    return run.exit_code


def cmd_vqa(args: argparse.Namespace) -> int:
    from .video import media_items, with_frames

    images = media_items(args, image_paths(args))
    engine = open_engine(args, "vqa")
    warnings = [unknown_texts_warning(engine.tokenizer, engine.folder, [args.question], "--question"),
                unknown_texts_warning(engine.tokenizer, engine.folder, args.candidates or [], "candidate")]
    if args.candidates is not None:
        from ..engine.generate import option_rules

        rules = option_rules()
        ignored = [(rules[name].flag if name in rules else None) or f"--{name.replace('_', '-')}"
                   for name in ("preset", *rules) if getattr(args, name) is not None]
        if ignored:
            raise UsageError(f"--candidates: ranks the given answers, so {', '.join(ignored)} would be ignored; "
                             f"leave them out")

        engine.candidate_ids(args.question, args.candidates)  # bad candidates fail before any work
        run = run_items(images, args.max_batch, with_frames(lambda part: engine.rank_answers(
            part, args.question, args.candidates, return_errors=True)), "vqa")
        warn(run, warnings)
        return print_rankings(args, images, engine, run)
    options = decoding(args, engine, "vqa", 1)
    run = run_items(images, args.max_batch, with_frames(lambda part: engine.generate_answers(
        part, args.question, return_errors=True, **options)), "vqa")
    warn(run, warnings)
    return print_generations(args, images, engine, run, {"question": args.question})


def cmd_match(args: argparse.Namespace) -> int:
    import numpy as np

    check_figure_paths(args.force, args.plot)
    images = image_paths(args, "images", "--images")
    engine = open_engine(args, "match")

    def per_image(part):
        scores, errors = engine.match(part, args.texts, return_errors=True)
        return list(zip(scores.itm, scores.itc)), errors

    run = run_items(images, args.max_batch, per_image, "match")
    warn(run, [unknown_texts_warning(engine.tokenizer, engine.folder, args.texts)])
    names = distinct_names(images)
    ok = [i for i in range(run.done) if i not in run.errors]
    itm = np.array([run.results[i][0] for i in ok]).reshape(len(ok), len(args.texts))
    itc = np.array([run.results[i][1] for i in ok]).reshape(len(ok), len(args.texts))
    if args.json:
        print_json({"model": str(args.model_dir), "random_weights": engine.manifest.random_weights,
                    "images": images, "texts": args.texts,
                    "itm": [None if r is None else r[0].tolist() for r in run.results],
                    "itc": [None if r is None else r[1].tolist() for r in run.results],
                    "errors": run.error_list(images), "interrupted": run.interrupted})
    elif ok:
        print("ITM match probability")
        print(format_table([names[i] for i in ok], args.texts, itm))
        print("\nITC cosine similarity")
        print(format_table([names[i] for i in ok], args.texts, itc))
    report_errors(run, images, args.debug)
    if args.plot and ok:  # after the results are out: a figure that fails to write loses nothing else
        from ..viz import RANDOM_WEIGHTS_NOTE, match_heatmaps

        note = RANDOM_WEIGHTS_NOTE if engine.manifest.random_weights else None
        views = [engine.preprocess.view(images[i]) for i in ok]
        save_figure(match_heatmaps(itm, itc, [names[i] for i in ok], args.texts, note=note, images=views),
                    args.plot, args.force)
    return run.exit_code


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    with ProgressBar(0, "demo") as bar:
        run_demo(Path(args.out), progress=bar, provider=args.provider, threads=args.threads, steps=bar.update)
    return 0
