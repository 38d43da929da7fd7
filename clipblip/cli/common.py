"""Helpers every command uses: JSON, engines, figures, tables."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

RANDOM_BANNER = "NOTE: this model has RANDOM weights; its outputs show speed and plumbing, not meaning."


def print_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def open_engine(args: argparse.Namespace, task: str | None = None):
    """The engine for ``args.model_dir``, of whatever family the folder holds; with ``task``, the folder must
    do it (classify: any CLIP-like family; caption: BLIP caption...). A folder of another kind is a
    WrongModelError saying what to export."""
    from ..engine.opening import open_engine as open_folder

    command = " ".join(filter(None, (args.command, getattr(args, "figure", None))))
    engine = open_folder(args.model_dir, task or (), provider=args.provider, threads=args.threads,
                         max_batch=args.max_batch, max_image_pixels=args.max_image_pixels,
                         needed_by=f"`clipblip {command}`")
    if engine.manifest.random_weights:
        print(RANDOM_BANNER, file=sys.stderr)
    return engine


def check_figure_paths(force: bool, *paths) -> None:
    """Before any work: each figure path can be written, and matplotlib (the `viz` extra) is installed."""
    from ..files import check_output

    for path in paths:
        if path is not None:
            check_output(path, force)
    if any(p is not None for p in paths):
        import matplotlib  # noqa: F401  (a missing `viz` extra is reported before the model runs)


def save_figure(fig, path, force: bool) -> None:
    from ..files import atomic_output, figure_metadata

    with atomic_output(path, force) as tmp:
        fig.savefig(tmp, dpi=120, metadata=figure_metadata(path))
    print(f"wrote {path}", file=sys.stderr)


def display_width(text: str) -> int:
    """Terminal columns of ``text``: wide (CJK) characters take two."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def pad(text: str, width: int, right: bool = False) -> str:
    room = " " * max(0, width - display_width(text))
    return room + text if right else text + room


def format_table(row_labels: Sequence[str], col_labels: Sequence[str], matrix) -> str:
    """A text table of ``matrix`` that lines up in a terminal, wide (CJK) labels included."""
    width = max(display_width(r) for r in row_labels)
    cols = [c if len(c) <= 24 else c[:21] + "..." for c in col_labels]
    widths = [max(display_width(c), 6) for c in cols]
    lines = [" " * width + "  " + "  ".join(pad(c, w, right=True) for c, w in zip(cols, widths))]
    for label, row in zip(row_labels, matrix):
        lines.append(pad(label, width) + "  " + "  ".join(f"{v:>{w}.3f}" for w, v in zip(widths, row)))
    return "\n".join(lines)
