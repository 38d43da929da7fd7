"""Progress on stderr: timestamped lines for stages, and a bar for long runs on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar", "progress"]

BAR_DELAY_S = 2.0  # a run shorter than this never shows a bar


START = time.perf_counter()


def progress(message: str) -> None:
    """One timestamped line on stderr."""
    print(f"[{time.perf_counter() - START:6.1f}s] {message}", file=sys.stderr, flush=True)


class ProgressBar:
    """``done / total`` with rate and time left, redrawn in place on stderr.

    Drawn only when stderr is a terminal and the run has lasted ``delay`` seconds, so that quick runs,
    pipes and log files stay clean. Use as a context manager; ``close`` clears the line.
    """

    def __init__(self, total: int, label: str, stream: TextIO | None = None, delay: float | None = None):
        self.total, self.label = max(int(total), 0), label
        self.stream = stream or sys.stderr
        self.delay = BAR_DELAY_S if delay is None else delay
        self.done, self.note = 0, ""
        self.start = time.perf_counter()
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.drawn = False

    def update(self, done: int, total: int | None = None, note: str | None = None) -> None:
        if total is not None:
            self.total = max(int(total), 0)
        if note is not None:
            self.note = note
        self.done = min(max(done, 0), self.total) if self.total else done
        self.draw()

    def draw(self) -> None:
        elapsed = time.perf_counter() - self.start
        if self.enabled and self.total and elapsed >= self.delay:
            self.stream.write("\r" + self.line(elapsed, self.note) + "\x1b[K")
            self.stream.flush()
            self.drawn = True

    def write(self, message: str) -> None:
        """A timestamped line above the bar (the bar is redrawn under it)."""
        if self.drawn:
            self.stream.write("\r\x1b[K")
        self.stream.write(f"[{time.perf_counter() - START:6.1f}s] {message}\n")
        self.stream.flush()
        self.drawn = False
        self.draw()

    __call__ = write  # a bar is also a `progress` callback

    def line(self, elapsed: float, note: str = "") -> str:
        width = 28
        fraction = self.done / self.total if self.total else 0.0
        filled = int(round(width * fraction))
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else None
        eta = f", {left:.0f}s left" if left is not None and self.done < self.total else ""
        extra = f"  {note}" if note else ""
        return (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"({elapsed:.0f}s{eta}){extra}")

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
