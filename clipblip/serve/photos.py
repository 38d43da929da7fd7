"""The photos and videos of a search database as the page shows them: by id (the sha256 of the file's content, as
indexed), thumbnails (of a video: of one of its segments' frames) made once and cached on disk, and originals. A
request names an id, never a path: only files that are rows of the database are ever read."""

from __future__ import annotations

import io
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from ..engine.images import load_image, to_rgb
from ..errors import ClipblipError, ImageError, UsageError
from ..files import replaced_atomically
from ..manifest import cache_root

__all__ = ["Photo", "Photos", "PhotoNotFound", "PhotoChanged", "THUMBNAIL_SIZES"]

THUMBNAIL_SIZES = (128, 256, 512)  # the longest side, in pixels
THUMBNAIL_QUALITY = 85
MEMORY_CACHE = 512  # thumbnails kept in memory (≈ 15 kB each at 256 pixels)
ID = re.compile(r"[0-9a-f]{64}")


class PhotoNotFound(ClipblipError):
    """The id is not a photo of the database, or its file is gone."""

    http_status = 404


class PhotoChanged(ClipblipError):
    """The file has changed since it was indexed: its vector no longer describes it."""

    http_status = 409


VIDEO_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
               ".webm": "video/webm", ".avi": "video/x-msvideo"}


@dataclass(frozen=True)
class Photo:
    id: str  # sha256 of the content as indexed
    path: str
    size: int
    mtime_ns: int
    duration: float | None = None  # seconds: a video
    frames: tuple[float, ...] = ()  # a video's segments' frames (seconds): the only frames served

    @property
    def is_video(self) -> bool:
        return self.duration is not None

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


class Photos:
    """Rows of the database ``db`` by id, re-read whenever the database file changes."""

    def __init__(self, db: str | os.PathLike, max_pixels: int | None, cache_dir: str | os.PathLike | None = None):
        self.db = Path(db)
        self.max_pixels = max_pixels
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "thumbnails"
        self.lock = threading.Lock()
        self.stamp: tuple | None = None
        self.by_id: dict[str, Photo] = {}
        self.id_of: dict[str, str] = {}  # path -> id
        self.memory: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    def refresh(self) -> None:
        from ..search.store import Store

        st = self.db.stat()
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self.lock:
            if stamp == self.stamp:
                return
            with Store.open(self.db) as store:
                entries = store.entries()
                frames = {path: tuple(row.frame for row in store.segments(path))
                          for path, e in entries.items() if e.is_video}
            self.by_id = {e.sha256: Photo(e.sha256, e.path, e.size, e.mtime_ns, e.duration, frames.get(e.path, ()))
                          for e in entries.values()}
            self.id_of = {e.path: e.sha256 for e in entries.values()}
            self.stamp = stamp

    def get(self, photo_id: str) -> Photo:
        """The photo with this id; PhotoNotFound for anything else (the id is never used as a path)."""
        if not ID.fullmatch(photo_id):
            raise PhotoNotFound(f"photo {photo_id[:80]!r}: not a photo id (64 hex digits)")
        self.refresh()
        photo = self.by_id.get(photo_id)
        if photo is None:
            raise PhotoNotFound(f"photo {photo_id}: not in the search database")
        return photo

    def ids(self) -> dict[str, str]:
        """Each indexed path's id, as the database holds them now."""
        self.refresh()
        return self.id_of

    def current(self, photo: Photo) -> None:
        """PhotoNotFound when the file is gone, PhotoChanged when it differs from what was indexed."""
        try:
            st = os.stat(photo.path)
        except OSError:
            raise PhotoNotFound(f"photo {photo.name}: its file is no longer on disk") from None
        if (st.st_size, st.st_mtime_ns) != (photo.size, photo.mtime_ns):
            raise PhotoChanged(f"photo {photo.name}: the file changed after it was indexed; run clipblip index again")

    def original(self, photo_id: str) -> tuple[str, str]:
        """(path, media type) of a photo's or video's file, as indexed."""
        photo = self.get(photo_id)
        self.current(photo)
        if photo.is_video:
            return photo.path, VIDEO_TYPES.get(os.path.splitext(photo.path)[1].lower(), "application/octet-stream")
        try:
            with Image.open(photo.path) as image:
                media_type = Image.MIME.get(image.format or "")
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageError(f"photo {photo.name}: not a readable image ({type(e).__name__})") from None
        return photo.path, media_type or "application/octet-stream"

    def thumbnail(self, photo_id: str, size: int, at: float | None = None) -> bytes:
        """A JPEG whose longest side is ``size`` pixels (the orientation of its EXIF applied), from memory, the
        disk cache, or made now and cached; of a video, the frame of its segment at ``at`` seconds (one of the
        frames that stand for its segments, default the first)."""
        if size not in THUMBNAIL_SIZES:
            raise UsageError(f"size {size}: thumbnails are {', '.join(map(str, THUMBNAIL_SIZES))} pixels")
        photo = self.get(photo_id)
        self.current(photo)
        if photo.is_video:
            at = self.frame_of(photo, at)
        elif at is not None:
            raise UsageError(f"at {at:g}: photo {photo.name} is not a video")
        key = (photo_id, size) if at is None else (photo_id, size, round(at * 1000))
        with self.lock:
            if key in self.memory:
                self.memory.move_to_end(key)
                return self.memory[key]
        name = photo_id if at is None else f"{photo_id}-{round(at * 1000)}ms"
        cached = self.cache_dir / str(size) / photo_id[:2] / f"{name}.jpg"
        try:
            data = cached.read_bytes()
        except OSError:
            data = self.make(photo, size, at)
            self.save(cached, data)
        with self.lock:
            self.memory[key] = data
            while len(self.memory) > MEMORY_CACHE:
                self.memory.popitem(last=False)
        return data

    @staticmethod
    def frame_of(photo: Photo, at: float | None) -> float:
        """``at`` when it is the frame of one of the video's segments (default: the first segment's)."""
        if not photo.frames:
            raise PhotoNotFound(f"video {photo.name}: has no indexed frame")
        if at is None:
            return photo.frames[0]
        for frame in photo.frames:
            if abs(frame - at) < 5e-4:
                return frame
        raise PhotoNotFound(f"video {photo.name}: no indexed segment has its frame at {at:g} s")

    def make(self, photo: Photo, size: int, at: float | None = None) -> bytes:
        if at is not None:
            from ..video import frame_at

            image = frame_at(photo.path, at, max_pixels=self.max_pixels).image
        else:
            image = load_image(photo.path, self.max_pixels)  # refuses a decompression bomb before decoding
            image = ImageOps.exif_transpose(image)
        image = to_rgb(image)
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
        return buffer.getvalue()

    @staticmethod
    def save(path: Path, data: bytes) -> None:
        """Written whole or not at all; a cache that cannot be written is only slower."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with replaced_atomically(path, OSError) as tmp:
                tmp.write_bytes(data)
        except OSError:
            pass
