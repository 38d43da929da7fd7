"""Helpers every command uses: JSON, engines, figures, tables."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from ..errors import UsageError

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


def check_argument_order(args: argparse.Namespace, inputs: Sequence[str], name: str = "IMAGE") -> None:
    """Before anything else: DIR that is no model folder while one of the ``inputs`` is one means the two were
    given the wrong way round; say so, rather than blame either of them."""
    from ..inputs import has_manifest

    if has_manifest(args.model_dir):
        return
    swapped = next((str(arg) for arg in inputs if has_manifest(arg)), None)
    if swapped is not None:
        raise UsageError(f"DIR {args.model_dir} and {name} {swapped} look swapped: the model folder (DIR) is the "
                         f"first argument")


def check_figure_paths(force: bool, *paths, option: str = "--plot") -> None:
    """Before any work: each figure path names a format clipblip writes and can be written, and matplotlib (the
    `viz` extra) is installed."""
    from ..files import FIGURE_FORMATS, check_output

    for path in paths:
        if path is None:
            continue
        suffix = os.path.splitext(str(path))[1].lower()
        if suffix not in FIGURE_FORMATS and not os.path.isdir(path):  # a folder: check_output names it
            kinds = ", ".join(FIGURE_FORMATS[:-1]) + " or " + FIGURE_FORMATS[-1]
            what = f"has the extension {suffix!r}" if suffix else "has no extension"
            raise UsageError(f"{option} {path}: {what}; figures are written as {kinds}: give a name ending in "
                             f"one of them")
        check_output(path, force)
    if any(p is not None for p in paths):
        import matplotlib  # noqa: F401  (a missing `viz` extra is reported before the model runs)


def save_figure(fig, path, force: bool) -> None:
    from ..errors import OutputError
    from ..files import atomic_output, figure_metadata

    try:
        with atomic_output(path, force) as tmp:
            fig.savefig(tmp, dpi=120, metadata=figure_metadata(path))
    except OSError as e:  # a full disk, a folder gone since the check
        raise OutputError(f"{path}: cannot be written ({e.strerror or e})") from None
    print(f"wrote {path}", file=sys.stderr)


def unknown_texts_warning(tokenizer, folder, texts: Sequence[str], what: str = "text") -> str | None:
    """The warning that names the ``texts`` the tokenizer of model ``folder`` reads as unknown tokens only (the
    model cannot tell them apart: SigLIP's vocabulary and Chinese labels, BLIP's and Chinese questions); None if
    there are none."""
    found = tokenizer.unknown_texts(list(texts))
    if not found:
        return None
    named = ", ".join(repr(texts[i]) for i in found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
    many = len(found) > 1
    return (f"{what}{'s' * many} {named}: every token is unknown to the tokenizer of {folder}, so the model reads "
            f"{'them all alike' if many else 'it as unknown tokens alone'}: scores and outputs do not reflect "
            f"{'their' if many else 'its'} words")


def warn(run, warnings: Sequence[str | None]) -> None:
    """Each warning on its own line, when there is a result it qualifies (``run`` None: the result is there);
    when every item failed, the errors alone are said."""
    if run is None or run.done > len(run.errors):
        for warning in filter(None, warnings):
            print(f"clipblip: warning: {warning}", file=sys.stderr)


def display_width(text: str) -> int:
    """Terminal columns of ``text``: wide (CJK) characters take two."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def pad(text: str, width: int, right: bool = False) -> str:
    room = " " * max(0, width - display_width(text))
    return room + text if right else text + room


def format_table(row_labels: Sequence[str], col_labels: Sequence[str], matrix) -> str:
    """A text table of ``matrix`` that lines up in a terminal, wide (CJK) labels included; values get the
    decimals (3 or more) that tell apart the cells that differ."""
    from ..viz.style import distinct_format

    fmt = distinct_format(matrix, least=3)
    cells = [[fmt.format(v) for v in row] for row in matrix]
    width = max(display_width(r) for r in row_labels)
    cols = [c if len(c) <= 24 else c[:21] + "..." for c in col_labels]
    cols = [c if c.strip() else repr(c) for c in cols]
    widths = [max([display_width(c), 6, *(len(row[j]) for row in cells)]) for j, c in enumerate(cols)]
    lines = [" " * width + "  " + "  ".join(pad(c, w, right=True) for c, w in zip(cols, widths))]
    for label, row in zip(row_labels, cells):
        lines.append(pad(label, width) + "  " + "  ".join(f"{v:>{w}}" for w, v in zip(widths, row)))
    return "\n".join(lines)
