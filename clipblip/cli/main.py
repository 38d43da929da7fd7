"""The `clipblip` entry point: argument parsing, error reporting, exit codes."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Sequence

from ..errors import ClipblipError
from .commands import (cmd_caption, cmd_classify, cmd_demo, cmd_embed, cmd_export, cmd_match, cmd_similarity,
                       cmd_vqa)
from .viz import cmd_viz_attention, cmd_viz_cross_attention, cmd_viz_toy, parse_head


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipblip", description="Export CLIP and BLIP to ONNX once; run them with ONNX Runtime alone.")
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

    def image_text_options(p: argparse.ArgumentParser, plot_help: str) -> None:
        engine_options(p)
        p.add_argument("--images", nargs="+", required=True, metavar="PATH")
        p.add_argument("--texts", nargs="+", required=True, metavar="TEXT")
        p.add_argument("--plot", metavar="FILE.png", help=plot_help)
        p.add_argument("--json", action="store_true", help="print one JSON document")

    p = sub.add_parser("similarity", help="image × text cosine similarity")
    image_text_options(p, "also draw a heatmap")
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
    image_text_options(p, "also draw both heatmaps")
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

