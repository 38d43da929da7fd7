"""The commands: export, embed, similarity, classify, caption, vqa, match, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import OutputExistsError, PartialFailure, UsageError
from .common import RANDOM_BANNER, format_table, open_engine, print_json, progress, save_figure
from .items import ItemRun, report_errors, run_items


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_model

    manifest = export_model(args.model, args.out, task=args.task, opset=args.opset, force=args.force,
                            attentions=args.attentions, precision=args.precision, optimize=args.optimize,
                            allow_pickle=args.allow_pickle, progress=progress)
    if manifest.random_weights:
        print(RANDOM_BANNER, file=sys.stderr)
    for name, graph in manifest.graphs.items():
        line = f"{name}: {graph.file}  {graph.precision}  max |ONNX - PyTorch| (fp32) = {graph.parity['max_abs_diff']:.2e}"
        if graph.optimization.get("applied"):
            line += f"  fused {graph.optimization['fused']}"
        if graph.accuracy:
            line += f"  {graph.accuracy['precision_tried']} gate {'passed' if graph.accuracy['passed'] else 'FAILED'}"
            line += f" {graph.accuracy.get('least') or graph.accuracy.get('reason')}"
        print(line)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from ..files import atomic_output

    if bool(args.images) == bool(args.texts):
        raise UsageError("embed: give either --images or --texts")
    engine = open_engine(args, "clip")
    items = args.images or args.texts
    if args.out and Path(args.out).exists() and not args.force:
        raise OutputExistsError(f"{args.out}: already exists; pass --force to replace it")
    fn = engine.embed_images if args.images else engine.embed_texts
    run = run_items(items, args.max_batch, fn)
    rows = [r if r is not None else np.full(engine.embed_dim, np.nan, np.float32) for r in run.results[: run.done]]
    embeddings = np.stack(rows) if rows else np.zeros((0, engine.embed_dim), np.float32)
    with atomic_output(args.out, args.force) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, embeddings)
    report_errors(run, items, args.debug)
    note = f"; NaN rows for failed items {sorted(run.errors)}" if run.errors else ""
    print(f"wrote {args.out}: {embeddings.shape[0]} x {embeddings.shape[1]} float32, rows L2-normalised{note}",
          file=sys.stderr)
    return run.exit_code


def cmd_similarity(args: argparse.Namespace) -> int:
    engine = open_engine(args, "clip")
    run = run_items(args.images, args.max_batch, lambda part: engine.similarity(part, args.texts))
    names = [Path(p).name for p in args.images]
    ok = [i for i in range(run.done) if i not in run.errors]
    if args.plot and ok:
        from ..viz import RANDOM_WEIGHTS_NOTE, similarity_heatmap

        note = RANDOM_WEIGHTS_NOTE if engine.manifest.random_weights else None
        views = [engine.preprocess.view(args.images[i]) for i in ok]
        fig = similarity_heatmap([run.results[i] for i in ok], [names[i] for i in ok], args.texts,
                                 title="CLIP cosine similarity", note=note, images=views)
        save_figure(fig, args.plot, args.force)
    if args.json:
        print_json({"model": str(args.model_dir), "random_weights": engine.manifest.random_weights,
                    "images": args.images, "texts": args.texts, "similarity": run.rows(),
                    "errors": run.error_list(args.images), "interrupted": run.interrupted})
    elif ok:
        print(format_table([names[i] for i in ok], args.texts, [run.results[i] for i in ok]))
    report_errors(run, args.images, args.debug)
    return run.exit_code


def cmd_classify(args: argparse.Namespace) -> int:
    engine = open_engine(args, "clip")
    run = run_items(args.images, args.max_batch, lambda part: engine.classify(part, args.labels, args.template))
    if args.json:
        print_json({"model": str(args.model_dir), "random_weights": engine.manifest.random_weights,
                    "template": args.template, "interrupted": run.interrupted,
                    "results": [{"image": image, **run.item(i, labels=[{"label": l, "probability": p}
                                                                       for l, p in run.results[i] or []])}
                                for i, image in enumerate(args.images)]})
    else:
        for i, image in enumerate(args.images[: run.done]):
            if i not in run.errors:
                print(image)
                for label, prob in run.results[i][: args.top_k]:
                    print(f"  {prob:7.2%}  {label}")
    report_errors(run, args.images, args.debug)
    return run.exit_code


def print_generations(args: argparse.Namespace, engine, run: ItemRun, extra: dict[str, Any]) -> int:
    if args.json:
        print_json({"model": str(args.model_dir), "random_weights": engine.manifest.random_weights, **extra,
                    "interrupted": run.interrupted,
                    "results": [{"image": str(image), **run.item(i, **(run.results[i] and {
                        "text": run.results[i].text, "token_ids": run.results[i].token_ids,
                        "prompt_ids": run.results[i].prompt_ids} or {}))} for i, image in enumerate(args.images)]})
    else:
        for i, image in enumerate(args.images[: run.done]):
            if i not in run.errors:
                print(f"{image}: {run.results[i].text}")
    report_errors(run, args.images, args.debug)
    return run.exit_code


def cmd_caption(args: argparse.Namespace) -> int:
    engine = open_engine(args, "blip")
    engine.require("caption")  # a wrong folder, prompt or max_new_tokens fails before any work
    engine.check_max_new_tokens(args.max_new_tokens, len(engine.caption_prompt(args.prompt)))
    run = run_items(args.images, args.max_batch,
                    lambda part: engine.generate_captions(part, prompt=args.prompt, max_new_tokens=args.max_new_tokens))
    return print_generations(args, engine, run, {"prompt": args.prompt})


def cmd_vqa(args: argparse.Namespace) -> int:
    engine = open_engine(args, "blip")
    engine.require("vqa")
    engine.check_max_new_tokens(args.max_new_tokens, 1)
    run = run_items(args.images, args.max_batch,
                    lambda part: engine.generate_answers(part, args.question, max_new_tokens=args.max_new_tokens))
    return print_generations(args, engine, run, {"question": args.question})


def cmd_match(args: argparse.Namespace) -> int:
    import numpy as np

    engine = open_engine(args, "blip")

    def per_image(part):
        try:
            scores = engine.match(part, args.texts)
        except PartialFailure as e:
            e.results = list(zip(e.results.itm, e.results.itc))
            raise
        return list(zip(scores.itm, scores.itc))

    run = run_items(args.images, args.max_batch, per_image)
    names = [Path(p).name for p in args.images]
    ok = [i for i in range(run.done) if i not in run.errors]
    itm = np.array([run.results[i][0] for i in ok]).reshape(len(ok), len(args.texts))
    itc = np.array([run.results[i][1] for i in ok]).reshape(len(ok), len(args.texts))
    if args.plot and ok:
        from ..viz import RANDOM_WEIGHTS_NOTE, match_heatmaps

        note = RANDOM_WEIGHTS_NOTE if engine.manifest.random_weights else None
        views = [engine.preprocess.view(args.images[i]) for i in ok]
        save_figure(match_heatmaps(itm, itc, [names[i] for i in ok], args.texts, note=note, images=views),
                    args.plot, args.force)
    if args.json:
        print_json({"model": str(args.model_dir), "random_weights": engine.manifest.random_weights,
                    "images": args.images, "texts": args.texts,
                    "itm": [None if r is None else r[0].tolist() for r in run.results],
                    "itc": [None if r is None else r[1].tolist() for r in run.results],
                    "errors": run.error_list(args.images), "interrupted": run.interrupted})
    elif ok:
        print("ITM match probability")
        print(format_table([names[i] for i in ok], args.texts, itm))
        print("\nITC cosine similarity")
        print(format_table([names[i] for i in ok], args.texts, itc))
    report_errors(run, args.images, args.debug)
    return run.exit_code


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(Path(args.out), progress=progress, provider=args.provider, threads=args.threads)
    return 0


# --- parser -----------------------------------------------------------------------------------------
