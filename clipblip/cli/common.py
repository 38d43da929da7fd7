"""Helpers every command uses: progress lines, JSON, engines, figures, tables."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Sequence

RANDOM_BANNER = "NOTE: this model has RANDOM weights; its outputs show speed and plumbing, not meaning."


def progress(message: str, _start=[time.perf_counter()]) -> None:
    print(f"[{time.perf_counter() - _start[0]:6.1f}s] {message}", file=sys.stderr, flush=True)


def print_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def open_engine(args: argparse.Namespace, family: str):
    from ..engine import BlipEngine, ClipEngine

    cls = {"clip": ClipEngine, "blip": BlipEngine}[family]
    engine = cls.from_dir(args.model_dir, provider=args.provider, threads=args.threads, max_batch=args.max_batch,
                          max_image_pixels=args.max_image_pixels)
    if engine.manifest.random_weights:
        print(RANDOM_BANNER, file=sys.stderr)
    return engine


def save_figure(fig, path: str, force: bool) -> None:
    from ..files import atomic_output

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
