"""Frames from video files, with PyAV (FFmpeg inside its wheel: the ``video`` extra).

A video is sampled at one frame every ``every`` seconds: for each time 0, S, 2S, ... the first frame shown at
or after it (a frame that covers several sample times stands for the first of them). Times are seconds from
the start of the video stream. Decoding is threaded; ahead of a sample time more than one keyframe interval
away, the decoder seeks to the last keyframe before it, which gives the frame decoding every packet would give
(a keyframe's decoding needs nothing before it), and no frame between the two is decoded.

Every failure is a :class:`VideoError` that names the file and, where known, the time in it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator

from .defaults import MAX_IMAGE_PIXELS
from .errors import ImageError, ImageTooLargeError, MissingExtraError
from .inputs import VIDEO_SUFFIXES, is_video_name

__all__ = ["VIDEO_SUFFIXES", "MAX_VIDEO_SECONDS", "VideoError", "VideoInfo", "Frame", "is_video_name", "probe",
           "sample_frames", "frame_at", "clock", "available"]

MAX_VIDEO_SECONDS = 24 * 3600  # a stream that says it is longer is refused before decoding
INSTALL = "pip install 'clipblip[video]'"


class VideoError(ImageError):
    """A video that cannot be read, decoded or is refused; the message names the file and, where known, the time."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    duration: float  # seconds, as the stream (else the container) says; 0 when it says nothing
    fps: float | None
    codec: str


@dataclass(frozen=True)
class Frame:
    time: float  # seconds from the start of the stream
    image: object  # PIL.Image.Image, RGB


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("av") is not None


def _av():
    try:
        import av
    except ImportError:
        raise MissingExtraError(f"videos need PyAV, which is not installed: {INSTALL}") from None
    return av


def clock(seconds: float) -> str:
    """``mm:ss`` (``h:mm:ss`` from an hour), whole seconds rounded down."""
    whole = int(max(seconds, 0.0))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class _Open:
    """An open container and its first video stream, checked against the limits before any frame is decoded."""

    def __init__(self, path: str | os.PathLike, max_pixels: int | None):
        av = _av()
        self.path = os.fspath(path)
        try:
            if os.path.getsize(self.path) == 0:
                raise VideoError(f"{self.path}: an empty file (0 bytes), not a video")
        except OSError as e:
            raise VideoError(f"{self.path}: cannot be read ({e.strerror or e})") from None
        try:
            self.container = av.open(self.path, metadata_errors="ignore")
        except av.FFmpegError as e:
            raise VideoError(f"{self.path}: not a readable video ({reason(e)})") from None
        except OSError as e:
            raise VideoError(f"{self.path}: cannot be read ({e.strerror or e})") from None
        try:
            self.stream = self.check(max_pixels)
        except BaseException:
            self.container.close()
            raise

    def check(self, max_pixels: int | None):
        streams = self.container.streams.video
        if not streams:
            raise VideoError(f"{self.path}: holds no video stream")
        stream = streams[0]
        context = stream.codec_context
        if context is None or context.name is None:
            raise VideoError(f"{self.path}: its video codec is not supported")
        width, height = int(context.width or 0), int(context.height or 0)
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLargeError(f"{self.path}: its frames are {width}x{height} pixels, more than the "
                                     f"{max_pixels} allowed (--max-image-pixels)")
        if self.duration > MAX_VIDEO_SECONDS:
            raise VideoError(f"{self.path}: says it lasts {clock(self.duration)}, longer than the "
                             f"{clock(MAX_VIDEO_SECONDS)} allowed")
        stream.thread_type = "AUTO"  # frame and slice threads
        return stream

    @property
    def start(self) -> float:
        """The stream's first timestamp, in seconds (times are counted from it)."""
        stream = self.container.streams.video[0]
        if stream.start_time is not None and stream.time_base is not None:
            return float(stream.start_time * stream.time_base)
        return 0.0

    @property
    def duration(self) -> float:
        stream = self.container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return max(float(stream.duration * stream.time_base), 0.0)
        if self.container.duration is not None:
            return max(self.container.duration / 1_000_000, 0.0)  # in AV_TIME_BASE units
        return 0.0

    def seek(self, seconds: float) -> None:
        """To the last keyframe at or before ``seconds`` (decoders flushed: what follows decodes as from the start)."""
        self.container.seek(round((seconds + self.start) / self.stream.time_base), stream=self.stream, backward=True)

    def info(self) -> VideoInfo:
        context = self.stream.codec_context
        rate = self.stream.average_rate or self.stream.guessed_rate
        return VideoInfo(int(context.width or 0), int(context.height or 0), self.duration,
                         float(rate) if rate else None, context.name)

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> _Open:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def reason(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return text.split(": '")[0].strip() or type(error).__name__


def probe(path: str | os.PathLike, max_pixels: int | None = MAX_IMAGE_PIXELS) -> VideoInfo:
    """What the container says of its first video stream (nothing is decoded)."""
    with _Open(path, max_pixels) as video:
        return video.info()


def sample_frames(path: str | os.PathLike, every: float, *, max_pixels: int | None = MAX_IMAGE_PIXELS,
                  ) -> Iterator[Frame]:
    """One frame every ``every`` seconds (see the module's note), to the end.

    A stream that ends well before its stated duration is a truncated file: VideoError with the time reached."""
    av = _av()
    if not every > 0 or not math.isfinite(every):
        raise ValueError(f"every {every}: must be a positive number of seconds")
    with _Open(path, max_pixels) as video:
        duration, start = video.duration, video.start
        target, last, keyframe_gap = 0.0, None, None  # next sample time; last frame's time; keyframe spacing seen
        previous_key = None
        try:
            for frame in decode(video, av):
                time = frame_time(frame, start)
                if time is None:
                    continue
                if frame.key_frame:
                    if previous_key is not None and time > previous_key:
                        keyframe_gap = time - previous_key
                    previous_key = time
                last = time
                if time + 1e-6 < target:
                    continue
                check_size(video.path, frame, max_pixels, time)
                yield Frame(time, frame.to_image())
                target = (math.floor(time / every + 1e-9) + 1) * every  # the next sample time after this frame
                if keyframe_gap is not None and target - time > 1.5 * keyframe_gap:
                    video.seek(target)
        except av.FFmpegError as e:
            at = f" at {clock(last)}" if last is not None else ""
            raise VideoError(f"{video.path}: cannot be decoded{at} ({reason(e)})") from None
        reached = (last or 0.0) + 1.0 / float(video.stream.average_rate or 25)
        if duration and reached < duration - max(1.0, 0.05 * duration):
            raise VideoError(f"{video.path}: truncated: its frames stop at {clock(reached)} of the "
                             f"{clock(duration)} it says it lasts")


def check_size(path: str, frame, max_pixels: int | None, time: float) -> None:
    """A stream may change its size mid-way: each frame kept is checked before its pixels are converted."""
    if max_pixels is not None and frame.width * frame.height > max_pixels:
        raise ImageTooLargeError(f"{path}: its frame at {clock(time)} is {frame.width}x{frame.height} pixels, more "
                                 f"than the {max_pixels} allowed (--max-image-pixels)")


def decode(video: _Open, av) -> Iterator:
    """Every frame of the stream in presentation order (a corrupt packet is skipped, as players skip it)."""
    for packet in video.container.demux(video.stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            continue
        yield from frames


def frame_time(frame, start: float) -> float | None:
    if frame.pts is None or frame.time_base is None:
        return None
    return float(frame.pts * frame.time_base) - start


def frame_at(path: str | os.PathLike, at: float, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Frame:
    """The frame shown at ``at`` seconds: the last one that starts at or before it."""
    av = _av()
    if not at >= 0 or not math.isfinite(at):
        raise ValueError(f"at {at}: must be a time in seconds, at least 0")
    with _Open(path, max_pixels) as video:
        if video.duration and at > video.duration:
            raise VideoError(f"{video.path}: has no frame at {clock(at)} ({at:g} s); it lasts {clock(video.duration)}")
        start, shown = video.start, None  # shown: (time, frame) of the last frame at or before ``at`` so far
        try:
            video.seek(at)
            for frame in decode(video, av):
                time = frame_time(frame, start)
                if time is None:
                    continue
                if time > at + 1e-6 and shown is not None:
                    break
                shown = (time, frame)
                if time > at + 1e-6:
                    break
            if shown is not None:  # only the frame shown is converted to pixels
                check_size(video.path, shown[1], max_pixels, shown[0])
                return Frame(shown[0], shown[1].to_image())
        except av.FFmpegError as e:
            raise VideoError(f"{video.path}: cannot be decoded at {clock(at)} ({reason(e)})") from None
        raise VideoError(f"{video.path}: has no frame at {clock(at)} ({at:g} s)")
