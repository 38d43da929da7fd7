"""Batch commands item by item: per-item errors and interruptions that keep the finished items."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import ClipblipError, PartialFailure
from .progress import ProgressBar


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


def run_items(items: list, chunk: int, fn, label: str = "items") -> ItemRun:
    """``fn(chunk_items)`` → ``(results, {index in chunk: error})``, chunk by chunk, with a progress bar
    on a terminal; each failed item's error is recorded under its index in ``items``."""
    run = ItemRun([None] * len(items))
    with ProgressBar(len(items), label) as bar:
        try:
            for start in range(0, len(items), chunk):
                part = items[start : start + chunk]
                out, errors = fn(part)
                run.errors.update({start + i: error for i, error in errors.items()})
                for i, result in enumerate(out):
                    if start + i not in run.errors:
                        run.results[start + i] = result
                run.done = start + len(part)
                bar.update(run.done)
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
