"""`clipblip viz ...`: toy attention, attention maps, cross-attention per word."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from ..families import title as family_title
from .common import check_argument_order, check_figure_paths, open_engine, save_figure, unknown_texts_warning, warn
from ..inputs import expand_images


def cmd_viz_toy(args: argparse.Namespace) -> int:
    from ..viz import TOY_TOKENS, toy_attention_figure

    check_figure_paths(args.force, args.out, option="--out")
    if args.d_model < 1 or args.heads < 1 or args.d_model % args.heads:
        raise UsageError(f"--d-model {args.d_model} --heads {args.heads}: both at least 1, and --d-model a multiple "
                         f"of --heads (each head takes d_model / heads dimensions)")
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


def one_image(args: argparse.Namespace) -> str:
    """The single image a figure is drawn for (a folder or pattern must name exactly one)."""
    check_argument_order(args, [args.image])
    arg = args.image
    paths = expand_images([arg]).paths
    if len(paths) != 1:
        raise UsageError(f"IMAGE {arg}: names {len(paths)} images; a figure is drawn for one image")
    return paths[0]


def check_view_options(args: argparse.Namespace) -> None:
    """Refuse option combinations that would be ignored."""
    if args.rollout and (args.layer is not None or args.head is not None):
        raise UsageError("--rollout: combines every layer with the mean of the heads; leave out --layer and --head")
    if args.head is not None and args.layer is None:
        raise UsageError(f"--head {args.head}: needs --layer (without it every layer is drawn, each head included "
                         f"in the text figure)")
    if args.layer is not None and args.layer < 0:
        raise UsageError(f"--layer {args.layer}: layers are numbered from 0")


def cmd_viz_attention(args: argparse.Namespace) -> int:
    from .. import viz

    check_view_options(args)
    out = Path(args.out)
    text_out = out.with_name(f"{out.stem}-text{out.suffix}")
    check_figure_paths(args.force, out, text_out, option="--out")
    image = one_image(args)
    engine = open_engine(args)
    head = "mean" if args.head is None else args.head
    note = viz.RANDOM_WEIGHTS_NOTE if engine.manifest.random_weights else None
    weights = engine.image_attentions(image)  # (layers, heads, tokens, tokens)
    image_fig = viz.image_attention_figure(engine.preprocess.view(image), weights,
                                           engine.manifest.model["patch_grid"], layer=args.layer, head=head,
                                           rollout=args.rollout, note=note,
                                           class_token=engine.manifest.model.get("class_token", True))
    text_fig = None
    if args.text is not None:
        if not hasattr(engine, "text_attentions"):
            raise UsageError("--text: token attention of a given text needs a CLIP-like folder (CLIP, Chinese-CLIP, "
                             "SigLIP); BLIP shows its caption's")
        tokens, weights = engine.text_attentions(args.text)
        text_fig = viz.token_attention_figure(weights, tokens, layer=args.layer, head=head,
                                              title=f"{family_title(engine.manifest.family)} text self-attention",
                                              note=note)
        warn(None, [unknown_texts_warning(engine.tokenizer, engine.folder, [args.text], "--text")])
    elif engine.manifest.family == "blip" and "caption" in engine.tasks:
        explained = engine.caption_attentions(image)
        text_fig = viz.token_attention_figure(explained.self_attention, explained.tokens, layer=args.layer,
                                              head=head, title="BLIP decoder self-attention", note=note)
    save_figure(image_fig, args.out, args.force)  # every figure is drawn (and every option checked) first
    if text_fig is not None:
        save_figure(text_fig, text_out, args.force)
    return 0


def cmd_viz_cross_attention(args: argparse.Namespace) -> int:
    from .. import viz

    check_figure_paths(args.force, args.out, option="--out")
    image = one_image(args)
    engine = open_engine(args, "caption")
    explained = engine.caption_attentions(image, prompt=args.prompt, max_new_tokens=args.max_new_tokens)
    warn(None, [args.prompt and unknown_texts_warning(engine.tokenizer, engine.folder, [args.prompt], "--prompt")])
    note = viz.RANDOM_WEIGHTS_NOTE if engine.manifest.random_weights else None
    fig = viz.cross_attention_figure(engine.preprocess.view(image), explained.words, explained.cross_attention,
                                     engine.manifest.model["patch_grid"], caption=explained.generation.text, note=note)
    save_figure(fig, args.out, args.force)
    print(explained.generation.text)
    return 0
