"""`clipblip viz ...`: toy attention, attention maps, cross-attention per word."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from .common import open_engine, save_figure


def cmd_viz_toy(args: argparse.Namespace) -> int:
    from ..viz import TOY_TOKENS, toy_attention_figure

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
    from ..manifest import Manifest

    return open_engine(args, Manifest.load(args.model_dir).family)


def cmd_viz_attention(args: argparse.Namespace) -> int:
    from .. import viz

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
    from .. import viz

    engine = open_engine(args, "blip")
    explained = engine.caption_attentions(args.image, prompt=args.prompt, max_new_tokens=args.max_new_tokens)
    note = viz.RANDOM_WEIGHTS_NOTE if engine.manifest.random_weights else None
    fig = viz.cross_attention_figure(engine.preprocess.view(args.image), explained.words, explained.cross_attention,
                                     engine.manifest.model["patch_grid"], caption=explained.generation.text, note=note)
    save_figure(fig, args.out, args.force)
    print(explained.generation.text)
    return 0
