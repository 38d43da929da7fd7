"""A video's sampled frames folded into segments: consecutive frames whose embeddings hardly differ are one
segment (start, end, one vector), so that a static shot is one row of the index, not one row per frame."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Segment", "fold", "FOLD_SIMILARITY"]

# cosine to the segment's first frame at or above which a frame joins it
FOLD_SIMILARITY = 0.9


@dataclass(frozen=True)
class Segment:
    start: float  # seconds: the time of its first frame
    end: float  # seconds: where the next segment starts, or the end of the video
    frame: float  # the time of the frame that stands for it (the nearest to its mean vector); ITM scores this frame
    vector: np.ndarray  # (dim,) float32, L2-normalised mean of its frames' embeddings

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "frame": self.frame}


def fold(times: Sequence[float], vectors: np.ndarray, duration: float,
         similarity: float = FOLD_SIMILARITY) -> list[Segment]:
    """Segments of frames sampled at ``times`` (ascending seconds) with embeddings ``vectors`` (N, dim): a frame whose
    cosine to the current segment's first frame is at least ``similarity`` joins it, else it starts the next one
    (comparing with the first frame, not the last, keeps a slow pan from folding into one segment)."""
    if len(times) != len(vectors):
        raise ValueError(f"{len(times)} times for {len(vectors)} vectors")
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)  # (N, dim)
    groups: list[list[int]] = []
    for i in range(len(times)):
        if groups and float(unit[groups[-1][0]] @ unit[i]) >= similarity:
            groups[-1].append(i)
        else:
            groups.append([i])
    segments = []
    for g, members in enumerate(groups):
        mean = unit[members].mean(axis=0)  # (dim,)
        mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
        stands_for = members[int(np.argmax(unit[members] @ mean))]
        end = times[groups[g + 1][0]] if g + 1 < len(groups) else max(duration, times[members[-1]])
        segments.append(Segment(float(times[members[0]]), float(end), float(times[stands_for]),
                                mean.astype(np.float32)))
    return segments
