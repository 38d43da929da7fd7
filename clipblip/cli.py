"""`clipblip` command line: export, embed, similarity, classify, caption, vqa, match, viz, demo."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import (ClipblipError, ImageError, NumericalError, OutputExistsError, PartialFailure,
                     UsageError)

RANDOM_BANNER = "NOTE: this model has RANDOM weights; its outputs show speed and plumbing, not meaning."


def progress(message: str, _start=[time.perf_counter()]) -> None:
    print(f"[{time.perf_counter() - _start[0]:6.1f}s] {message}", file=sys.stderr, flush=True)


def print_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def open_engine(args: argparse.Namespace, family: str):
    from .engine import BlipEngine, ClipEngine

    cls = {"clip": ClipEngine, "blip": BlipEngine}[family]
    engine = cls.from_dir(args.model_dir, provider=args.provider, threads=args.threads, max_batch=args.max_batch,
                          max_image_pixels=args.max_image_pixels)
    if engine.manifest.random_weights:
        print(RANDOM_BANNER, file=sys.stderr)
    return engine


def save_figure(fig, path: str, force: bool) -> None:
    from .files import atomic_output

    with atomic_output(path, force) as tmp:
        fig.savefig(tmp, dpi=120)
    print(f"wrote {path}", file=sys.stderr)


def format_table(row_labels: Sequence[str], col_labels: Sequence[str], matrix) -> str:
    width = max(len(r) for r in row_labels)
    cols = [c if len(c) <= 24 else c[:21] + "..." for c in col_labels]
    lines = [" " * width + "  " + "  ".join(f"{c:>{max(len(c), 6)}}" for c in cols)]
    for label, row in zip(row_labels, matrix):
        lines.append(f"{label:<{width}}  " + "  ".join(f"{v:>{max(len(c), 6)}.3f}" for c, v in zip(cols, row)))
    return "\n".join(lines)


# --- commands ---------------------------------------------------------------------------------------

def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

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


@dataclass
class ItemRun:
    """Per-item results of a batch command, run chunk by chunk so that an interruption keeps the
    finished chunks: ``results[i]`` is None for items that failed (``errors[i]``) or never ran."""

    results: list
    errors: dict[int, ClipblipError] = field(default_factory=dict)
    done: int = 0
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        if self.errors and len(self.results) == 1:
            return self.errors[0].exit_code
        return PartialFailure.exit_code if self.errors else 0

    def error_list(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """Failed and unrun items, for --json documents that hold results as matrices."""
        return [{"index": i, "image": str(names[i]), **self.item(i)} for i in range(len(self.results))
                if i in self.errors or i >= self.done]

    def rows(self) -> list:
        """Per item: its result row as a list, or None."""
        return [None if r is None else r.tolist() for r in self.results]

    def item(self, i: int, **fields: Any) -> dict[str, Any]:
        """One item of the --json document: its fields, or its error."""
        if i in self.errors:
            return {"error": str(self.errors[i]), "error_type": type(self.errors[i]).__name__}
        if i >= self.done:
            return {"error": "not run: interrupted", "error_type": "Interrupted"}
        return fields


def run_items(items: list, chunk: int, fn) -> ItemRun:
    """``fn(chunk_items)`` → one result per item, chunk by chunk; per-item failures are recorded."""
    run = ItemRun([None] * len(items))
    try:
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            try:
                out = fn(part)
            except PartialFailure as e:
                out = e.results
                run.errors.update({start + i: err for i, err in e.errors.items()})
            except (ImageError, NumericalError) as e:
                if len(part) != 1:
                    raise
                out, run.errors[start] = [None], e
            for i, result in enumerate(out):
                if start + i not in run.errors:
                    run.results[start + i] = result
            run.done = start + len(part)
    except KeyboardInterrupt:
        run.interrupted = True
    return run


def report_errors(run: ItemRun, names: Sequence[str], debug: bool = False) -> None:
    """One line per failed item on stderr (with --debug: the first failure's traceback)."""
    if debug and run.errors:
        raise run.errors[min(run.errors)]
    for i, error in sorted(run.errors.items()):
        print(f"clipblip: error: {error}" if str(names[i]) in str(error) else f"clipblip: error: {names[i]}: {error}",
              file=sys.stderr)
    if run.interrupted:
        print(f"clipblip: interrupted after {run.done} of {len(run.results)} items; finished items are kept",
              file=sys.stderr)


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from .files import atomic_output

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
        from .viz import RANDOM_WEIGHTS_NOTE, similarity_heatmap

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
        from .viz import RANDOM_WEIGHTS_NOTE, match_heatmaps

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


def cmd_viz_toy(args: argparse.Namespace) -> int:
    from .viz import TOY_TOKENS, toy_attention_figure

    tokens = args.tokens or list(TOY_TOKENS)
    save_figure(toy_attention_figure(tokens, seed=args.seed, d_model=args.d_model, heads=args.heads), args.out,
                args.force)
    return 0


def parse_head(value: str) -> int | str:
    if value == "mean":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--head {value!r}: a head number or 'mean'") from None


def open_any_engine(args: argparse.Namespace):
    from .manifest import Manifest

    return open_engine(args, Manifest.load(args.model_dir).family)


def cmd_viz_attention(args: argparse.Namespace) -> int:
    from . import viz

    engine = open_any_engine(args)
    note = viz.RANDOM_WEIGHTS_NOTE if engine.manifest.random_weights else None
    weights = engine.image_attentions(args.image)  # (layers, heads, tokens, tokens)
    image_fig = viz.image_attention_figure(engine.preprocess.view(args.image), weights,
                                           engine.manifest.model["patch_grid"], layer=args.layer, head=args.head,
                                           rollout=args.rollout, note=note)
    save_figure(image_fig, args.out, args.force)
    text_fig = None
    if args.text is not None:
        if engine.manifest.family != "clip":
            raise UsageError("--text: token attention of a given text needs a CLIP folder (BLIP shows its caption's)")
        tokens, weights = engine.text_attentions(args.text)
        text_fig = viz.token_attention_figure(weights, tokens, layer=args.layer, head=args.head,
                                              title="CLIP text self-attention", note=note)
    elif engine.manifest.family == "blip" and "caption" in engine.tasks:
        explained = engine.caption_attentions(args.image)
        text_fig = viz.token_attention_figure(explained.self_attention, explained.tokens, layer=args.layer,
                                              head=args.head, title="BLIP decoder self-attention", note=note)
    if text_fig is not None:
        out = Path(args.out)
        save_figure(text_fig, out.with_name(f"{out.stem}-text{out.suffix}"), args.force)
    return 0


def cmd_viz_cross_attention(args: argparse.Namespace) -> int:
    from . import viz

    engine = open_engine(args, "blip")
    explained = engine.caption_attentions(args.image, prompt=args.prompt, max_new_tokens=args.max_new_tokens)
    note = viz.RANDOM_WEIGHTS_NOTE if engine.manifest.random_weights else None
    fig = viz.cross_attention_figure(engine.preprocess.view(args.image), explained.words, explained.cross_attention,
                                     engine.manifest.model["patch_grid"], caption=explained.generation.text, note=note)
    save_figure(fig, args.out, args.force)
    print(explained.generation.text)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), progress=progress, provider=args.provider, threads=args.threads)
    return 0


# --- parser -----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipblip", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def engine_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("model_dir", metavar="DIR", help="a model folder written by `clipblip export`")
        p.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: ORT's choice)")
        p.add_argument("--max-batch", type=int, default=16, help="largest batch one graph run takes")
        p.add_argument("--max-image-pixels", type=int, default=64_000_000,
                       help="refuse images with more pixels, before decoding them (default 64 million)")
        p.add_argument("--force", action="store_true", help="replace existing output files")

    p = sub.add_parser("export", help="export a model to an ONNX model folder")
    p.add_argument("model", metavar="MODEL",
                   help="Hub id, save_pretrained directory, or random:clip-base|clip-tiny|blip-base|blip-tiny")
    p.add_argument("--out", required=True, help="model folder to create")
    p.add_argument("--task", default=None, help="for BLIP: caption, vqa or itm (default: from the checkpoint)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8", "fp16"],
                   help="int8 for CPU, fp16 for CUDA; each graph must pass an accuracy gate or stays fp32")
    p.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="skip ONNX Runtime's transformer fusions (on by default, kept only if parity holds)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="also load pickled (.bin) weights; only for checkpoints you trust")
    p.add_argument("--attentions", action="store_true",
                   help="also output attention weights (for `clipblip viz`); graphs are leaner without")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("embed", help="L2-normalised CLIP embeddings to a .npy file")
    engine_options(p)
    p.add_argument("--images", nargs="+", metavar="PATH")
    p.add_argument("--texts", nargs="+", metavar="TEXT")
    p.add_argument("--out", required=True, metavar="FILE.npy")
    p.set_defaults(run=cmd_embed)

    p = sub.add_parser("similarity", help="image × text cosine similarity")
    engine_options(p)
    p.add_argument("--images", nargs="+", required=True, metavar="PATH")
    p.add_argument("--texts", nargs="+", required=True, metavar="TEXT")
    p.add_argument("--plot", metavar="FILE.png", help="also draw a heatmap")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=cmd_similarity)

    p = sub.add_parser("classify", help="zero-shot classification with CLIP")
    engine_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", nargs="+", required=True, metavar="LABEL")
    p.add_argument("--template", default="a photo of a {}.")
    p.add_argument("--top-k", type=int, default=5, help="labels shown per image in the table")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=cmd_classify)

    p = sub.add_parser("caption", help="BLIP image captions")
    engine_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--prompt", default=None, help="text the caption starts with")
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--json", action="store_true", help="print one JSON document, with token ids")
    p.set_defaults(run=cmd_caption)

    p = sub.add_parser("vqa", help="BLIP visual question answering")
    engine_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--question", required=True)
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print one JSON document, with token ids")
    p.set_defaults(run=cmd_vqa)

    p = sub.add_parser("match", help="BLIP image–text matching (ITM) and contrastive similarity (ITC)")
    engine_options(p)
    p.add_argument("--images", nargs="+", required=True, metavar="PATH")
    p.add_argument("--texts", nargs="+", required=True, metavar="TEXT")
    p.add_argument("--plot", metavar="FILE.png", help="also draw both heatmaps")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=cmd_match)

    p = sub.add_parser("viz", help="figures: toy attention, real attention maps, cross-attention per word")
    viz_sub = p.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    q = viz_sub.add_parser("toy-attention", help="self-attention step by step on a short sentence")
    q.add_argument("--out", required=True, metavar="FILE.png")
    q.add_argument("--tokens", nargs="+", help="tokens to attend over (default: [CLS] 我 喜欢 小猫 和 小狗)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--d-model", type=int, default=8)
    q.add_argument("--heads", type=int, default=2)
    q.add_argument("--force", action="store_true")
    q.set_defaults(run=cmd_viz_toy)
    q = viz_sub.add_parser("attention", help="class-token attention over the image [and text attention]; "
                                             "needs a folder exported with --attentions")
    engine_options(q)
    q.add_argument("image", metavar="IMAGE")
    q.add_argument("--text", help="CLIP: also the text's token attention (written to OUT-text.png)")
    q.add_argument("--layer", type=int, default=None, help="one layer (default: every layer)")
    q.add_argument("--head", type=parse_head, default="mean", help="a head number or 'mean' (default)")
    q.add_argument("--rollout", action="store_true", help="attention rollout across all layers")
    q.add_argument("--out", required=True, metavar="FILE.png")
    q.set_defaults(run=cmd_viz_attention)
    q = viz_sub.add_parser("cross-attention", help="BLIP caption: where the decoder looked for each word")
    engine_options(q)
    q.add_argument("image", metavar="IMAGE")
    q.add_argument("--prompt", default=None)
    q.add_argument("--max-new-tokens", type=int, default=30)
    q.add_argument("--out", required=True, metavar="FILE.png")
    q.set_defaults(run=cmd_viz_cross_attention)

    p = sub.add_parser("demo", help="export CLIP and run it on real photos; results into --out")
    p.add_argument("--out", default="demo-output")
    p.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(run=cmd_demo)
    return parser


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM ends a command like Ctrl-C: finished items are written, staging folders removed
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, interrupt) if on_main else None
    try:
        return args.run(args)
    except ClipblipError as e:
        if args.debug:
            raise
        print(f"clipblip: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("clipblip: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # anything unexpected: still one line unless --debug
        if args.debug:
            raise
        print(f"clipblip: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
