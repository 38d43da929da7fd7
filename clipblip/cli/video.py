"""Videos given to `caption` and `vqa`: the frame at ``--at SECONDS``, or (caption) one every ``--every S`` seconds
as a timed list, printed and written as SRT or WebVTT subtitles with ``--out``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ClipblipError, UsageError
from ..inputs import is_video_name

__all__ = ["add_video_options", "Moment", "media_items", "with_frames", "caption_every", "subtitles"]

SUBTITLE_FORMATS = (".srt", ".vtt")


def add_video_options(p: argparse.ArgumentParser, every: bool) -> None:
    p.add_argument("--at", type=float, default=None, metavar="SECONDS",
                   help="for a video among the inputs: the frame shown at this time (83.5: 1 min 23.5 s)")
    if every:
        p.add_argument("--every", type=float, default=None, metavar="S",
                       help="caption one video's frames one every S seconds, as a timed list")
        p.add_argument("--out", default=None, metavar="FILE.srt|FILE.vtt",
                       help="with --every: also write the timed captions as SRT or WebVTT subtitles")


@dataclass(frozen=True)
class Moment:
    """The frame of ``video`` shown at ``at`` seconds, decoded when its chunk runs."""

    video: str
    at: float
    max_pixels: int | None

    def __str__(self) -> str:
        from ..video import clock

        return f"{self.video} @ {clock(self.at)} ({self.at:g} s)"

    def image(self):
        from ..video import frame_at

        return frame_at(self.video, self.at, max_pixels=self.max_pixels).image


def media_items(args: argparse.Namespace, paths: list[str]) -> list:
    """The command's inputs: image paths as they are, each video as the :class:`Moment` at ``--at``."""
    videos = [p for p in paths if is_video_name(p)]
    if args.at is not None and not videos:
        raise UsageError("--at: gives the time of a frame in a video; no input is a video (mp4, mov, mkv, webm, avi)")
    if args.at is not None and not 0 <= args.at < float("inf"):
        raise UsageError(f"--at {args.at:g}: must be a time in seconds, at least 0")
    if videos and args.at is None:
        raise UsageError(f"{videos[0]}: a video; give --at SECONDS for the frame to read"
                         + (", or --every S for one every S seconds" if hasattr(args, "every") else ""))
    return [Moment(p, args.at, args.max_image_pixels) if is_video_name(p) else p for p in paths]


def with_frames(fn: Callable) -> Callable:
    """``fn(images)`` → ``(results, errors)`` over a chunk whose :class:`Moment` items are decoded first; a frame
    that cannot be decoded is that item's error."""

    def run(part: list) -> tuple[list, dict[int, ClipblipError]]:
        inputs, errors = [], {}
        for i, item in enumerate(part):
            try:
                inputs.append(item.image() if isinstance(item, Moment) else item)
            except ClipblipError as e:
                errors[i] = e
                inputs.append(None)
        kept = [i for i in range(len(part)) if i not in errors]
        out, failed = fn([inputs[i] for i in kept]) if kept else ([], {})
        results: list[Any] = [None] * len(part)
        for n, i in enumerate(kept):
            if n in failed:
                errors[i] = failed[n]
            else:
                results[i] = out[n]
        return results, errors

    return run


def caption_every(args: argparse.Namespace, paths: list[str], engine, caption: Callable) -> tuple[str, list[dict]]:
    """(the video, its timed captions ``{"start", "end", "text"}``) of the one video in ``paths``, a frame every
    ``--every`` seconds, captioned ``--max-batch`` frames at a time by ``caption(images)``."""
    from ..video import probe, sample_frames

    if not 0 < args.every < float("inf"):
        raise UsageError(f"--every {args.every:g}: must be more than 0 seconds")
    if args.at is not None:
        raise UsageError("--every: captions the whole video; leave out --at")
    if len(paths) != 1 or not is_video_name(paths[0]):
        raise UsageError("--every: give one video (mp4, mov, mkv, webm, avi)")
    video = paths[0]
    duration = probe(video, args.max_image_pixels).duration
    timed: list[dict] = []
    chunk: list = []

    def flush() -> None:
        for frame, text in zip(chunk, caption([f.image for f in chunk])):
            timed.append({"start": frame.time, "text": text})
        chunk.clear()

    for frame in sample_frames(video, args.every, max_pixels=args.max_image_pixels):
        chunk.append(frame)
        if len(chunk) == args.max_batch:
            flush()
    if chunk:
        flush()
    for i, entry in enumerate(timed):  # each caption holds until the next one starts
        entry["end"] = timed[i + 1]["start"] if i + 1 < len(timed) else max(duration, entry["start"] + args.every)
    return video, timed


def stamp(seconds: float, separator: str) -> str:
    millis = int(round(max(seconds, 0.0) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}{separator}{millis % 1000:03d}"


def subtitles(timed: list[dict], suffix: str, header: str) -> str:
    """SRT or WebVTT text of timed captions (WebVTT's markup characters escaped: a caption is text, never markup;
    the header goes in a WebVTT NOTE, SRT has no place for one)."""
    blocks = []
    if suffix == ".vtt":
        blocks.append(f"WEBVTT\n\nNOTE {header}")
        for entry in timed:
            text = entry["text"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            blocks.append(f"{stamp(entry['start'], '.')} --> {stamp(entry['end'], '.')}\n{text}")
    else:
        for n, entry in enumerate(timed, 1):
            blocks.append(f"{n}\n{stamp(entry['start'], ',')} --> {stamp(entry['end'], ',')}\n{entry['text']}")
    return "\n\n".join(blocks) + "\n"


def write_subtitles(args: argparse.Namespace, timed: list[dict], random_weights: bool) -> None:
    from ..files import MARK, atomic_output, remember_written

    suffix = "." + args.out.rsplit(".", 1)[-1].lower() if "." in args.out else ""
    header = f"written by {MARK}" + (": RANDOM WEIGHTS, these captions mean nothing" if random_weights else "")
    with atomic_output(args.out, args.force) as tmp:
        tmp.write_text(subtitles(timed, suffix, header), encoding="utf-8")
    if suffix == ".srt":
        remember_written(args.out)
    print(f"wrote {args.out}", file=sys.stderr)


def check_subtitle_output(args: argparse.Namespace) -> None:
    """--out before any work: only with --every, a .srt or .vtt name that may be written."""
    from ..files import check_output

    if args.out is None:
        return
    if args.every is None:
        raise UsageError("--out: writes the timed captions of --every; give --every S")
    if not args.out.lower().endswith(SUBTITLE_FORMATS):
        raise UsageError(f"--out {args.out}: subtitles are written as .srt or .vtt; give a name ending in one")
    check_output(args.out, args.force)
