"""The `clipblip` entry point: the commands and their options, error reporting, exit codes."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Sequence

from .. import __version__, families
from ..defaults import MAX_BATCH, MAX_IMAGE_PIXELS, PROVIDER_CHOICES
from ..errors import ClipblipError, MissingExtraError
from .video import add_video_options
from .commands import (cmd_caption, cmd_classify, cmd_demo, cmd_embed, cmd_export, cmd_match, cmd_similarity,
                       cmd_verify, cmd_vqa)
from .parsing import Parser, decoding_options, positive
from .search import cmd_index, cmd_search
from .serve import cmd_serve
from .viz import cmd_viz_attention, cmd_viz_cross_attention, cmd_viz_toy, parse_head

IMAGES_HELP = "image files, folders (searched recursively for image files) or quoted glob patterns"
PROVIDER_HELP = ("auto: CUDA if usable, else CPU, with OpenVINO for the graphs it runs faster on a CPU with AMX; "
                 "openvino: OpenVINO wherever the folder holds a graph for it")
THREADS_HELP = "intra-op threads (default: ONNX Runtime's choice)"
FIGURE_HELP = "the figure to write: FILE.png, .svg or .pdf"
# the extra that installs each optional top-level package (`pip install clipblip[EXTRA]`)
EXTRAS = {"torch": "export", "transformers": "export", "onnx": "export", "safetensors": "export",
          "matplotlib": "viz", "onnxruntime": "cpu", "fastapi": "serve", "uvicorn": "serve",
          "prometheus_client": "serve", "ray": "ray", "yaml": "ray", "pyarrow": "ray", "open_clip": "open_clip",
          "timm": "open_clip", "av": "video"}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="clipblip", description="Export CLIP and BLIP to ONNX once; run them with ONNX Runtime alone.")
    parser.add_argument("--version", action="version", version=f"clipblip {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    common = Parser(add_help=False)  # options every command takes, after its name too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")

    def command(parent, name: str, **kwargs) -> argparse.ArgumentParser:
        return parent.add_parser(name, parents=[common], **kwargs)

    def runtime_options(p: argparse.ArgumentParser, batch_help: str) -> None:
        p.add_argument("--provider", default="auto", choices=PROVIDER_CHOICES, help=PROVIDER_HELP)
        p.add_argument("--threads", type=positive, default=None, help=THREADS_HELP)
        p.add_argument("--max-batch", type=positive, default=MAX_BATCH, help=f"{batch_help} (default {MAX_BATCH})")
        p.add_argument("--max-image-pixels", type=positive, default=MAX_IMAGE_PIXELS,
                       help=f"refuse images with more pixels, before decoding them (default {MAX_IMAGE_PIXELS:,})")

    def engine_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("model_dir", metavar="DIR", help="a model folder written by `clipblip export`")
        runtime_options(p, "largest batch one graph run takes")
        p.add_argument("--force", action="store_true", help="replace output files that clipblip wrote before")

    p = command(sub, "export", help="export a model to an ONNX model folder")
    p.add_argument("model", metavar="MODEL",
                   help="Hub id, save_pretrained directory, an OpenCLIP checkpoint (a folder in open_clip's hub layout, "
                        "hf-hub:ORG/NAME or open_clip:ARCH/TAG; the open_clip extra), or a random-weight preset: "
                        f"{', '.join(families.preset_names())}")
    p.add_argument("--out", required=True, help="model folder to create")
    p.add_argument("--task", default=None, choices=families.export_tasks(),
                   help="for BLIP: which head to export (default: from the checkpoint)")
    p.add_argument("--opset", type=int, default=17, help="the ONNX opset the graphs are written with")
    p.add_argument("--force", action="store_true", help="replace a model folder that clipblip exported before")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8", "int4", "fp16", "bf16"],
                   help="int8 for CPU; int4: 4-bit decoder-step weights, int8 elsewhere (int8 if int4 fails its "
                        "gate); fp16 for CUDA; bf16 for CPUs that compute it (AVX-512 BF16, AMX), on OpenVINO, "
                        "fp32 elsewhere; each graph must pass an accuracy gate or stays fp32. With OpenVINO "
                        "installed, the graphs it runs faster also get a copy for it (docs/speed.md)")
    p.add_argument("--calibration", metavar="DIR", default=None,
                   help="int8: images and .txt texts (one per line) that OpenVINO's int8 copies calibrate their "
                        "activation ranges on (default: seeded sample inputs); ~100 of your own is plenty")
    p.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="skip ONNX Runtime's transformer fusions (on by default, kept only if parity holds)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="also load pickled (.bin) weights; only for checkpoints you trust")
    p.add_argument("--attentions", action="store_true",
                   help="also output attention weights (for `clipblip viz`); graphs are leaner without")
    p.add_argument("--threads", type=positive, default=None,
                   help="CPU threads of the export's PyTorch and ONNX Runtime runs (default: one per core); the "
                        "folder written is the same")
    p.add_argument("--towers", default=families.BOTH, choices=[*families.TOWERS, families.BOTH],
                   help="CLIP-like models: write one tower alone, for a service that only embeds images (image) or "
                        "only texts (text); such a folder embeds, and does no similarity or classification")
    p.set_defaults(run=cmd_export)

    p = command(sub, "verify", help="run each graph's stored check on this machine: one line per graph, exit 0 if "
                                    "all pass")
    p.add_argument("model_dir", metavar="DIR", help="a model folder written by `clipblip export`")
    p.add_argument("--provider", default="auto", choices=PROVIDER_CHOICES,
                   help="where the graphs run, as for the other commands (default auto)")
    p.add_argument("--threads", type=positive, default=None, help=THREADS_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON document with every result")
    p.set_defaults(run=cmd_verify)

    p = command(sub, "embed", help="L2-normalised embeddings: the matrix to .npy, with their names to .npz, or JSON")
    engine_options(p)
    p.add_argument("--images", nargs="+", metavar="PATH", help=IMAGES_HELP)
    p.add_argument("--texts", nargs="+", metavar="TEXT", help="texts to embed (quote each one that has spaces)")
    p.add_argument("--out", metavar="FILE.npy|FILE.npz",
                   help=".npy: the matrix, a row per item embedded, in input order; .npz: arrays embeddings, items "
                        "(paths or texts), indices, modality")
    p.add_argument("--json", action="store_true", help="print one JSON document with the embeddings")
    p.set_defaults(run=cmd_embed)

    def image_text_options(p: argparse.ArgumentParser, plot_help: str) -> None:
        engine_options(p)
        p.add_argument("--images", nargs="+", required=True, metavar="PATH", help=IMAGES_HELP)
        p.add_argument("--texts", nargs="+", required=True, metavar="TEXT",
                       help="the texts to score each image against (quote each one that has spaces)")
        p.add_argument("--plot", metavar="FILE.png", help=f"{plot_help}: FILE.png, .svg or .pdf")
        p.add_argument("--json", action="store_true", help="print one JSON document")

    p = command(sub, "similarity", help="image × text cosine similarity")
    image_text_options(p, "also draw a heatmap")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="per image, its K best texts, best first")
    p.set_defaults(run=cmd_similarity)

    p = command(sub, "classify", help="zero-shot classification (CLIP, Chinese-CLIP, SigLIP)")
    engine_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help=IMAGES_HELP)
    p.add_argument("--labels", nargs="+", required=True, metavar="LABEL",
                   help="the labels to choose between, each put in --template (quote each one that has spaces)")
    p.add_argument("--template", default=None, help="where each label goes, as '{}' (default: the model's own "
                   "prompt, recorded at export: CLIP 'a photo of a {}.', Chinese-CLIP '一张{}的照片。', SigLIP "
                   "'This is a photo of {}.')")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="labels shown per image in the table")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=cmd_classify)

    p = command(sub, "caption", help="BLIP image captions")
    engine_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help=IMAGES_HELP)
    p.add_argument("--prompt", default=None, help="text the caption starts with")
    decoding_options(p, "30")
    add_video_options(p, every=True)
    p.add_argument("--json", action="store_true", help="print one JSON document, with token ids (and beam scores)")
    p.set_defaults(run=cmd_caption)

    p = command(sub, "vqa", help="BLIP visual question answering")
    engine_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help=IMAGES_HELP)
    p.add_argument("--question", required=True, help="the question asked of every image")
    decoding_options(p, "10")
    add_video_options(p, every=False)
    p.add_argument("--candidates", nargs="+", default=None, metavar="ANSWER",
                   help="rank these answers by the decoder's log-likelihood instead of generating one")
    p.add_argument("--json", action="store_true", help="print one JSON document, with token ids")
    p.set_defaults(run=cmd_vqa)

    p = command(sub, "match", help="BLIP image–text matching (ITM) and contrastive similarity (ITC)")
    image_text_options(p, "also draw both heatmaps")
    p.set_defaults(run=cmd_match)

    p = command(sub, "viz", help="figures: toy attention, real attention maps, cross-attention per word")
    viz_sub = p.add_subparsers(dest="figure", required=True, metavar="FIGURE", parser_class=Parser)
    q = command(viz_sub, "toy-attention", help="self-attention step by step on a short sentence")
    q.add_argument("--out", required=True, metavar="FILE.png", help=FIGURE_HELP)
    q.add_argument("--tokens", nargs="+", help="tokens to attend over (default: [CLS] 我 喜欢 小猫 和 小狗)")
    q.add_argument("--seed", type=int, default=0, help="seed of the random embeddings and projections")
    q.add_argument("--d-model", type=int, default=8, help="width of each token's embedding")
    q.add_argument("--heads", type=int, default=2, help="attention heads; --d-model must be a multiple of it")
    q.add_argument("--force", action="store_true", help="replace a figure that clipblip wrote before")
    q.set_defaults(run=cmd_viz_toy)
    q = command(viz_sub, "attention", help="class-token attention over the image [and text attention]; "
                                             "needs a folder exported with --attentions")
    engine_options(q)
    q.add_argument("image", metavar="IMAGE", help="the image (a file, or a folder or pattern naming one image)")
    q.add_argument("--text", help="CLIP: also the text's token attention (written to OUT-text.png)")
    q.add_argument("--layer", type=int, default=None, help="one layer (default: every layer)")
    q.add_argument("--head", type=parse_head, default=None,
                   help="with --layer: a head number or 'mean' (default: the mean of the heads)")
    q.add_argument("--rollout", action="store_true", help="attention rollout across all layers (no --layer/--head)")
    q.add_argument("--out", required=True, metavar="FILE.png",
                   help=f"{FIGURE_HELP} (with a text figure: also OUT-text.png beside it)")
    q.set_defaults(run=cmd_viz_attention)
    q = command(viz_sub, "cross-attention", help="BLIP caption: where the decoder looked for each word")
    engine_options(q)
    q.add_argument("image", metavar="IMAGE", help="the image (a file, or a folder or pattern naming one image)")
    q.add_argument("--prompt", default=None, help="text the caption starts with")
    q.add_argument("--max-new-tokens", type=int, default=30, metavar="N", help="the most words (tokens) generated")
    q.add_argument("--out", required=True, metavar="FILE.png", help=FIGURE_HELP)
    q.set_defaults(run=cmd_viz_cross_attention)

    p = command(sub, "serve", help="serve model folders over HTTP with dynamic batching (FastAPI; or Ray Serve)")
    p.add_argument("folders", nargs="+", metavar="DIR", help="model folders, served under their names (NAME=DIR to "
                                                             "choose another)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--provider", default="auto", choices=PROVIDER_CHOICES, help=PROVIDER_HELP)
    p.add_argument("--threads", type=positive, default=None, help="intra-op threads per model (default: ONNX Runtime's "
                                                             "choice)")
    p.add_argument("--max-batch", type=positive, default=MAX_BATCH, help="most items in one engine call")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a lone request waits for others to batch with (default 5)")
    p.add_argument("--max-queue", type=int, default=1024,
                   help="items a model may hold waiting; past it, 503 with Retry-After (default 1024)")
    p.add_argument("--max-request-bytes", type=int, default=32 << 20, help="larger bodies get 413 (default 32 MiB)")
    p.add_argument("--max-image-pixels", type=positive, default=MAX_IMAGE_PIXELS,
                   help=f"images with more pixels get 413, refused before decoding (default {MAX_IMAGE_PIXELS:,})")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* (default: the "
                                                   "CLIPBLIP_API_KEY environment variable, if set)")
    p.add_argument("--db", default=None, help="also answer POST /v1/search over this `clipblip index` database")
    p.add_argument("--ray", action="store_true", help="deploy on Ray Serve (the `ray` extra)")
    p.add_argument("--replicas", type=positive, default=None, help="with --ray: replicas per model (default 1)")
    p.add_argument("--ray-address", default=None, help="with --ray: the cluster to join (default: RAY_ADDRESS, "
                                                       "else a local cluster)")
    p.add_argument("--emit-config", metavar="FILE.yaml", default=None,
                   help="write a Ray Serve config (serve deploy, KubeRay) for these folders, and exit")
    p.add_argument("--force", action="store_true", help="replace a config file that clipblip wrote before")
    p.set_defaults(run=cmd_serve)

    p = command(sub, "index", help="embed the images and videos under PATHs into a search database (new and changed "
                                   "files only)")
    p.add_argument("model_dir", metavar="DIR",
                   help="a CLIP, Chinese-CLIP or SigLIP folder, or a BLIP retrieval (itm) folder")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="image and video (mp4, mov, mkv, webm, avi; the `video` extra) files, folders (searched "
                        "recursively) or quoted glob patterns")
    p.add_argument("--db", required=True, metavar="DB", help="the database file (created if missing), e.g. photos.db")
    runtime_options(p, "images (or video frames) embedded per batch")
    p.add_argument("--frame-every", type=float, default=2.0, metavar="S",
                   help="a video's frames are sampled one every S seconds (default 2)")
    p.add_argument("--fold-similarity", type=float, default=0.9, metavar="COS",
                   help="consecutive frames stay one segment while their cosine to its first frame is at least COS "
                        "(default 0.9; above 1: one segment per frame)")
    p.add_argument("--json", action="store_true", help="print what the run did as one JSON document")
    ray = p.add_argument_group("on Ray Data (the `ray` extra); the model folder and the images must be readable at "
                               "the same absolute paths on every node")
    ray.add_argument("--ray", action="store_true", help="embed on an actor pool of Ray Data; this process decides "
                                                        "what to embed and writes the database")
    ray.add_argument("--ray-address", default=None, help="the cluster to join (default: RAY_ADDRESS, else a local "
                                                         "cluster of WORKERS x THREADS CPUs)")
    ray.add_argument("--workers", type=positive, default=1, help="engines in the pool, each loads the folder once "
                                                            "(default 1); --threads is each one's CPUs")
    ray.add_argument("--emit-job", metavar="FILE.yaml", default=None,
                     help="write a KubeRay RayJob that runs this index with --ray on a cluster, and exit")
    ray.add_argument("--job-image", default="clipblip:latest", help="with --emit-job: the container image (clipblip "
                                                                   "with the `ray` extra; default clipblip:latest)")
    ray.add_argument("--job-volume-claim", default="clipblip-data",
                     help="with --emit-job: the PersistentVolumeClaim that holds the folder, images and database")
    ray.add_argument("--job-mount", default="/data", help="with --emit-job: where every pod mounts it (default /data)")
    ray.add_argument("--force", action="store_true", help="with --emit-job: replace a job file clipblip wrote before")
    p.set_defaults(run=cmd_index)

    p = command(sub, "search", help="the images of a search database nearest to a text or an image")
    p.add_argument("--db", required=True, metavar="DB", help="a database written by `clipblip index`")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", metavar="T", help="find the images that best match this text")
    query.add_argument("--image", metavar="IMG", help="find the images most like this image file")
    query.add_argument("--like", metavar="PATH[@S]", help="find what is most like an indexed photo, or the segment of "
                                                        "an indexed video shown at S seconds (PATH@83.5)")
    p.add_argument("-k", type=int, default=10, help="how many images (default 10)")
    p.add_argument("--rerank", nargs="?", const="", default=None, metavar="ITM_DIR",
                   help="order the best k x 4 (at least 20) by BLIP's ITM match probability (default ITM_DIR: "
                        "the database's model, when it is a BLIP retrieval folder)")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="embed the query with this folder (default: the database's own; must be the same model)")
    p.add_argument("--provider", default="auto", choices=PROVIDER_CHOICES, help=PROVIDER_HELP)
    p.add_argument("--threads", type=positive, default=None, help=THREADS_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=cmd_search)

    p = command(sub, "demo", help="export CLIP and BLIP, run them on real photos; results and report.html into --out")
    p.add_argument("--out", default="demo-output", help="a new or empty folder, or one an earlier demo wrote")
    p.add_argument("--provider", default="auto", choices=PROVIDER_CHOICES, help=PROVIDER_HELP)
    p.add_argument("--threads", type=positive, default=None, help=THREADS_HELP)
    p.set_defaults(run=cmd_demo)
    return parser


def interrupt(signum, frame):
    raise KeyboardInterrupt


def chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that ``args`` ran, for its usage line."""
    for name in ("command", "figure"):
        action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if action is None or getattr(args, name, None) not in action.choices:
            break
        parser = action.choices[getattr(args, name)]
    return parser


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; an unknown option gets that command's usage and the closest option."""
    parser = build_parser()
    Parser.argv = list(sys.argv[1:] if argv is None else argv)
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = chosen_parser(parser, args)
        command.error(command.unknown_option_message(extras) or f"unrecognized arguments: {' '.join(extras)}")
    return args


def missing_extra(error: ModuleNotFoundError, command: str) -> MissingExtraError | None:
    """The error that names the extra to install, when ``error`` is about an optional package."""
    package = (error.name or "").split(".")[0]
    extra = EXTRAS.get(package)
    if extra is None:
        return None
    install = "pip install 'clipblip[cpu]' (or 'clipblip[gpu]')" if extra == "cpu" else f"pip install 'clipblip[{extra}]'"
    return MissingExtraError(f"`clipblip {command}` needs {package}, which is not installed: {install}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
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
    except BrokenPipeError:  # the reader went away (`clipblip ... --json | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as e:  # anything unexpected: still one line unless --debug
        if args.debug:
            raise
        extra = missing_extra(e, args.command) if isinstance(e, ModuleNotFoundError) else None
        if extra is not None:
            print(f"clipblip: error: {extra}", file=sys.stderr)
            return extra.exit_code
        print(f"clipblip: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)

