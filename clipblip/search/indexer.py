"""Index image and video files into a search database, incrementally, committing batch by batch.

A video is sampled at one frame every ``frame_every`` seconds and its frames folded into segments
(:mod:`.segments`); it is committed whole, with its segments, or not at all. A file is embedded when it is new, or when its size or mtime changed *and* its sha256 changed; a file
whose size/mtime changed but whose content did not just gets its size and mtime updated. Entries under
the paths given whose file is gone are removed. Each batch is committed on its own, so an interruption
loses at most the batch in flight, and the next run resumes where it stopped.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..defaults import MAX_BATCH, MAX_IMAGE_PIXELS
from ..engine.base import missing_towers, tower_refusal
from ..engine.items import batches
from ..errors import ClipblipError, DatabaseError, ImageError, UsageError, WrongModelError
from ..inputs import is_video_name
from ..manifest import MANIFEST_NAME, Manifest, sha256_of
from .segments import FOLD_SIMILARITY, Segment
from .store import Entry, Meta, Store
from .videos import Meter, video_segments

__all__ = ["IndexReport", "Indexer", "index_paths", "open_model", "model_sha256", "FRAME_EVERY"]

FRAME_EVERY = 2.0  # seconds between the frames sampled from a video


@dataclass
class IndexReport:
    """What one indexing run did. ``embedded`` counts files (photos and videos) embedded, ``videos`` the videos of
    them, ``frames`` their sampled frames and ``segments`` what those folded into, over ``video_seconds`` of video;
    ``decode_seconds`` and ``embed_seconds`` are the wall time of decoding frames and of embedding them.
    ``failed`` holds ``{"path", "error"}`` for each file that could not be embedded (it has no entry afterwards);
    ``skipped`` counts files that are neither images nor videos by their extension."""

    embedded: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    interrupted: bool = False
    videos: int = 0
    frames: int = 0
    segments: int = 0
    video_seconds: float = 0.0
    decode_seconds: float = 0.0
    embed_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"embedded": self.embedded, "unchanged": self.unchanged, "removed": self.removed,
                "skipped": self.skipped, "failed": list(self.failed),
                **({"videos": self.videos, "frames": self.frames, "segments": self.segments,
                    "video_seconds": round(self.video_seconds, 3), "decode_seconds": round(self.decode_seconds, 3),
                    "embed_seconds": round(self.embed_seconds, 3)} if self.videos else {})}


def model_sha256(model_dir: str | os.PathLike) -> str:
    """sha256 of the folder's manifest.json (after checking it is a readable manifest)."""
    Manifest.load(model_dir)
    return sha256_of(Path(model_dir) / MANIFEST_NAME)


def open_model(model_dir: str | os.PathLike, provider: str = "auto", threads: int | None = None,
               max_batch: int = MAX_BATCH, max_image_pixels: int | None = MAX_IMAGE_PIXELS):
    """The engine that embeds images for a database: a CLIP-like model (CLIP, Chinese-CLIP, SigLIP), or a
    BLIP retrieval folder's ITC projection."""
    from ..engine.opening import open_engine

    return open_engine(model_dir, ("embed", "match"), provider=provider, threads=threads, max_batch=max_batch,
                       max_image_pixels=max_image_pixels, needed_by="a search database")


class Scope:
    """The paths one run covers: entries under them whose file is gone are removed."""

    def __init__(self, args: Sequence[str]):
        self.exact: set[str] = set()
        self.prefixes: list[str] = []
        self.patterns: list[re.Pattern] = []
        for arg in args:
            absolute = os.path.abspath(arg)
            if not os.path.lexists(arg) and set("*?[") & set(arg):
                self.patterns.append(re.compile(glob_regex(absolute)))
            else:  # a file or a folder, or one that is gone: either
                self.exact.add(absolute)
                self.prefixes.append(absolute.rstrip(os.sep) + os.sep)

    def covers(self, path: str) -> bool:
        return (path in self.exact or any(path.startswith(p) for p in self.prefixes)
                or any(p.fullmatch(path) for p in self.patterns))


def glob_regex(pattern: str) -> str:
    """A regular expression for a glob pattern as ``glob.glob(recursive=True)`` reads it."""
    out, i = [], 0
    sep = re.escape(os.sep)
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith(os.sep, i):  # `**/`: any folders, or none
                i += 1
                out.append(f"(?:.*{sep})?")
            else:
                out.append(".*")
        elif pattern[i] == "*":
            out.append(f"[^{sep}]*")
            i += 1
        elif pattern[i] == "?":
            out.append(f"[^{sep}]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1 : end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def expand(args: Sequence[str]) -> tuple[list[str], int]:
    """Absolute image and video paths under ``args`` (files, folders, patterns), each once, and the count of
    skipped files. A folder or pattern that holds none gives none (its old entries are then removed)."""
    from ..inputs import ImageArgs, expand_images, folder_images

    paths, skipped = [], 0
    for arg in args:
        if os.path.isdir(arg):  # a folder left with no image is not an error here: its entries go
            found = ImageArgs()
            found.paths = folder_images(arg, found, videos=True)
        else:
            try:
                found = expand_images([arg], "PATH", videos=True)
            except UsageError:  # a pattern that matches no image
                found = ImageArgs(skipped=len([m for m in glob.glob(arg, recursive=True) if os.path.isfile(m)]))
        paths.extend(os.path.abspath(p) for p in found.paths)
        skipped += found.skipped
    return list(dict.fromkeys(paths)), skipped


class Indexer:
    """One indexing run; ``report`` holds what it did so far (also after an interruption)."""

    def __init__(self, db: str | os.PathLike, model_dir: str | os.PathLike, *, engine=None, max_batch: int = MAX_BATCH,
                 provider: str = "auto", threads: int | None = None,
                 max_image_pixels: int | None = MAX_IMAGE_PIXELS, frame_every: float = FRAME_EVERY,
                 fold_similarity: float = FOLD_SIMILARITY):
        if max_batch < 1:
            raise UsageError(f"--max-batch {max_batch}: must be at least 1")
        if not 0 < frame_every <= 3600:
            raise UsageError(f"--frame-every {frame_every:g}: must be more than 0 and at most 3600 seconds")
        if not -1 <= fold_similarity < float("inf"):  # NaN fails too
            raise UsageError(f"--fold-similarity {fold_similarity:g}: a cosine, at least -1 (above 1: never fold)")
        self.db, self.model_dir = Path(db), Path(model_dir)
        self.max_batch = max_batch
        self.frame_every, self.fold_similarity = float(frame_every), float(fold_similarity)
        self.max_image_pixels = max_image_pixels
        self.engine_options = {"provider": provider, "threads": threads, "max_image_pixels": max_image_pixels}
        self.engine = engine
        self.report = IndexReport()

    def open_store(self) -> Store:
        manifest = Manifest.load(self.model_dir)
        sha = model_sha256(self.model_dir)
        if self.db.exists() or self.db.is_symlink():
            store = Store.open(self.db, writable=True)
            if store.meta.model_sha256 != sha:
                store.close()
                raise DatabaseError(f"{self.db}: was indexed with another model ({store.meta.model_dir}, manifest "
                                    f"sha256 {store.meta.model_sha256[:12]}); {self.model_dir} has manifest sha256 "
                                    f"{sha[:12]}; index into a new database")
            absolute = os.path.abspath(self.model_dir)
            if store.meta.model_dir != absolute:  # the same model, moved or copied: remember where it is now
                store.set_model_dir(absolute)
                store.commit()
            return store
        if self.engine is None:
            self.engine = open_model(self.model_dir, max_batch=self.max_batch, **self.engine_options)
        meta = Meta(model_dir=os.path.abspath(self.model_dir), model_sha256=sha, family=manifest.family,
                    dim=int(self.engine.embed_dim), model_fingerprint=manifest.source.get("fingerprint"))
        return Store.create(self.db, meta)

    def check_frame_options(self, store: Store) -> None:
        """The database's videos were sampled and folded with one --frame-every and --fold-similarity (recorded at
        its first run): another pair would mix two samplings, and an unchanged video is never decoded again."""
        for key, option, value in (("frame_every", "--frame-every", self.frame_every),
                                   ("fold_similarity", "--fold-similarity", self.fold_similarity)):
            recorded = store.setting(key)
            if recorded is None:
                store.set_setting(key, repr(value))
            elif float(recorded) != value:
                raise UsageError(f"{option} {value:g}: {self.db} was indexed with {option} {float(recorded):g}; give "
                                 f"that, or index into a new database")
        store.commit()

    def run(self, paths: Sequence[str], progress: Callable[[int, int], None] | None = None) -> IndexReport:
        """Index the images and videos under ``paths``; ``progress(done, total)`` after each batch of changed
        photos and of a video's frames, counted in photos plus whole seconds of video.
        KeyboardInterrupt passes through after the batch in flight is rolled back (``report.interrupted``)."""
        if not paths:
            raise UsageError("index: give at least one PATH")
        held = Manifest.load(self.model_dir).towers
        if missing_towers(held, ("image",)):  # before any file is looked at
            raise WrongModelError(tower_refusal(str(self.model_dir), held, ("image",), "indexing images"))
        files, self.report.skipped = expand(paths)
        with self.open_store() as store:
            self.check_frame_options(store)
            known = store.entries()
            scope = Scope(paths)
            gone = [p for p in known if scope.covers(p) and p not in files and not os.path.isfile(p)]
            store.remove(gone)
            store.commit()
            self.report.removed = len(gone)
            candidates = []  # (path, stat) of files that are new or whose size/mtime changed
            for path in files:
                try:
                    st = os.stat(path)
                except OSError as e:
                    self.fail(store, known, path, ImageError(f"{path}: cannot be read ({e.strerror or e})"))
                    continue
                entry = known.get(path)
                if entry is not None and (entry.size, entry.mtime_ns) == (st.st_size, st.st_mtime_ns):
                    self.report.unchanged += 1
                else:
                    candidates.append((path, st))
            store.commit()
            try:
                if candidates:
                    self.embed_changed(store, known, candidates, progress)
            except KeyboardInterrupt:
                store.connection.rollback()
                self.report.interrupted = True
                raise
        return self.report

    def embed_changed(self, store: Store, known: dict[str, Entry], candidates: list,
                      progress: Callable[[int, int], None] | None) -> None:
        """Hash and embed the files whose size or mtime changed, committing batch by batch (in this process;
        :class:`clipblip.search.ray_index.RayIndexer` does it on Ray Data)."""
        if self.engine is None:
            self.engine = open_model(self.model_dir, max_batch=self.max_batch, **self.engine_options)
        meter = Meter(candidates, progress)
        photos = [c for c in candidates if not is_video_name(c[0])]
        for batch in (photos[part] for part in batches(len(photos), self.max_batch)):
            self.index_batch(store, known, batch)
            store.commit()
            meter.advance(len(batch))
        for path, st in candidates:
            if is_video_name(path):
                self.index_video(store, known, path, st, meter)
                store.commit()

    def index_video(self, store: Store, known: dict[str, Entry], path: str, st, meter: Meter) -> None:
        """Hash, decode, embed and fold one changed video, committed whole (unless its bytes are unchanged)."""
        entry = self.entry(store, known, path, st, duration=0.0)
        if entry is None:
            meter.advance(meter.seconds(path))
            return
        try:
            duration, segments = self.video_segments(path, meter.progress_within(path))
        except ClipblipError as e:
            self.fail(store, known, path, e)
        else:
            self.put_video(store, replace(entry, duration=duration), segments)
        meter.advance(meter.seconds(path))

    def video_segments(self, path: str, progress: Callable[[float], None] | None = None,
                       ) -> tuple[float, list[Segment]]:
        if self.engine is None:
            self.engine = open_model(self.model_dir, max_batch=self.max_batch, **self.engine_options)
        return video_segments(self.engine, path, frame_every=self.frame_every, fold_similarity=self.fold_similarity,
                              max_batch=self.max_batch, max_image_pixels=self.max_image_pixels, report=self.report,
                              progress=progress)

    def entry(self, store: Store, known: dict[str, Entry], path: str, st, duration: float | None = None,
              ) -> Entry | None:
        """The file's entry with its content hash, or None when it needs no embedding (its bytes are those
        indexed, or it cannot be read: a failure recorded)."""
        try:
            sha = sha256_of(path)
        except OSError as e:
            self.fail(store, known, path, ImageError(f"{path}: cannot be read ({e.strerror or e})"))
            return None
        entry = Entry(path, st.st_size, st.st_mtime_ns, sha, duration)
        return None if self.kept_unchanged(store, known, entry) else entry

    def index_batch(self, store: Store, known: dict[str, Entry], batch: list) -> None:
        to_embed = [e for e in (self.entry(store, known, path, st) for path, st in batch) if e is not None]
        if not to_embed:
            return
        vectors, errors = self.engine.embed_images([e.path for e in to_embed], return_errors=True)
        for i, entry in enumerate(to_embed):
            if i in errors:
                self.fail(store, known, entry.path, errors[i])
            else:
                self.put(store, entry, vectors[i])

    def kept_unchanged(self, store: Store, known: dict[str, Entry], entry: Entry) -> bool:
        """Whether ``entry`` has the bytes already indexed (touched, or copied over with the same bytes): its
        new size and mtime are recorded and it counts as unchanged."""
        old = known.get(entry.path)
        if old is None or old.sha256 != entry.sha256:
            return False
        store.touch(entry)
        self.report.unchanged += 1
        return True

    def put(self, store: Store, entry: Entry, vector) -> None:
        store.put(entry, vector)
        self.report.embedded += 1

    def put_video(self, store: Store, entry: Entry, segments: list[Segment]) -> None:
        store.put_video(entry, segments)
        self.report.embedded += 1
        self.report.videos += 1
        self.report.segments += len(segments)
        self.report.video_seconds += entry.duration or 0.0

    def fail(self, store: Store, known: dict[str, Entry], path: str, error: ClipblipError) -> None:
        """Record a file that cannot be embedded; an older entry of it (now stale) is removed."""
        message = str(error)
        self.report.failed.append({"path": path, "error": message if path in message else f"{path}: {message}"})
        if path in known:
            store.remove([path])


def index_paths(db: str | os.PathLike, model_dir: str | os.PathLike, paths: Sequence[str] | str, *,
                max_batch: int = MAX_BATCH, provider: str = "auto", threads: int | None = None,
                max_image_pixels: int | None = MAX_IMAGE_PIXELS, engine=None,
                progress: Callable[[int, int], None] | None = None, frame_every: float = FRAME_EVERY,
                fold_similarity: float = FOLD_SIMILARITY) -> IndexReport:
    """Embed every image and video under ``paths`` (files, folders searched recursively, glob patterns) with the
    model folder ``model_dir`` and store the vectors in the database file ``db`` (created if missing): a video as
    segments of frames sampled every ``frame_every`` seconds, consecutive frames folded while their cosine to the
    segment's first stays at or above ``fold_similarity``. Runs again embed only new and changed files and drop
    entries whose file is gone. Returns an :class:`IndexReport`."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    indexer = Indexer(db, model_dir, engine=engine, max_batch=max_batch, provider=provider, threads=threads,
                      max_image_pixels=max_image_pixels, frame_every=frame_every, fold_similarity=fold_similarity)
    return indexer.run([os.fspath(p) for p in paths], progress)
