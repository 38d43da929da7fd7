"""Videos in an index: a video's frames sampled, embedded and folded into segments (:mod:`.segments`), and a run's
progress counted in photos plus seconds of video."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Callable

import numpy as np

from ..errors import ClipblipError
from ..inputs import is_video_name
from .segments import Segment, fold

__all__ = ["video_segments", "Meter"]


def video_segments(engine, path: str, *, frame_every: float, fold_similarity: float, max_batch: int,
                   max_image_pixels: int | None, report=None,
                   progress: Callable[[float], None] | None = None) -> tuple[float, list[Segment]]:
    """(duration, segments) of a video: frames sampled every ``frame_every`` seconds, embedded ``max_batch`` at a
    time, folded; ``report`` (an IndexReport) counts frames and the seconds spent decoding and embedding."""
    from ..video import probe, sample_frames

    report = report if report is not None else SimpleNamespace(frames=0, decode_seconds=0.0, embed_seconds=0.0)
    duration = probe(path, max_image_pixels).duration
    times: list[float] = []
    vectors: list[np.ndarray] = []
    pending: list = []

    def embed() -> None:
        started = time.perf_counter()
        vectors.append(engine.embed_images([f.image for f in pending]))  # (len(pending), dim)
        report.embed_seconds += time.perf_counter() - started
        times.extend(f.time for f in pending)
        report.frames += len(pending)
        if progress is not None:
            progress(pending[-1].time)
        pending.clear()

    frames = sample_frames(path, frame_every, max_pixels=max_image_pixels)
    while True:
        started = time.perf_counter()
        frame = next(frames, None)
        report.decode_seconds += time.perf_counter() - started
        if frame is None:
            break
        pending.append(frame)
        if len(pending) == max_batch:
            embed()
    if pending:
        embed()
    if not times:
        return duration, []
    duration = max(duration, times[-1])
    return duration, fold(times, np.concatenate(vectors), duration, fold_similarity)


class Meter:
    """Progress of a run in photos plus whole seconds of video (a video's length as its container says)."""

    def __init__(self, candidates: list, progress: Callable[[int, int], None] | None):
        self.progress = progress
        self.lengths: dict[str, float] = {}
        if progress is not None:
            for path, _ in candidates:
                if is_video_name(path):
                    self.lengths[path] = self.probe(path)
        self.total = sum(1 for p, _ in candidates if not is_video_name(p)) + int(sum(self.lengths.values()))
        self.done = 0

    @staticmethod
    def probe(path: str) -> float:
        from ..video import probe

        try:
            return probe(path, None).duration
        except ClipblipError:  # named when the video itself is indexed
            return 0.0

    def seconds(self, path: str) -> int:
        return int(self.lengths.get(path, 0.0))

    def advance(self, amount: int) -> None:
        self.done += amount
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)

    def progress_within(self, path: str) -> Callable[[float], None] | None:
        """``progress(seconds decoded)`` inside one video."""
        if self.progress is None:
            return None
        length = self.seconds(path)
        return lambda at: self.progress(min(self.done + min(int(at), length), self.total), self.total)
