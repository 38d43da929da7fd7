"""The search database: one SQLite file (stdlib ``sqlite3``, rollback journal, no WAL) holding a vector per image
and per video segment.

Tables::

    meta(key TEXT PRIMARY KEY, value TEXT)        -- app, schema_version, model_dir, model_sha256,
                                                  -- family, dim, clipblip_version[, model_fingerprint]
    images(path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT, vector BLOB)
    videos(path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT, duration REAL)   -- schema 2
    segments(path TEXT, start REAL, end REAL, frame REAL, vector BLOB, PRIMARY KEY (path, start))

``vector`` is the image's L2-normalised embedding as float32 bytes (``dim`` of them); a segment's is the mean of
its frames' (:mod:`.segments`), times in seconds. Paths are absolute as indexed; searching needs none of them to
exist, so a database can be copied and searched elsewhere. A schema-1 database (photos only) is read as it is and
gains the two video tables the first time it is opened for writing.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .. import __version__
from ..errors import DatabaseError
from ..files import replaced_atomically

__all__ = ["APP", "SCHEMA_VERSION", "Entry", "Meta", "Row", "Store"]

APP = "clipblip-search"
SCHEMA_VERSION = 2
READS = (1, 2)  # schema versions this clipblip opens (1: before videos)

VIDEO_TABLES = """
CREATE TABLE videos (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    duration REAL NOT NULL
);
CREATE TABLE segments (
    path TEXT NOT NULL,
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    frame REAL NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (path, start)
);
"""
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    vector BLOB NOT NULL
);
""" + VIDEO_TABLES


@dataclass(frozen=True)
class Meta:
    """What a database records about the model that built it."""

    model_dir: str  # absolute, as indexed
    model_sha256: str  # sha256 of model_dir/manifest.json
    family: str
    dim: int
    clipblip_version: str = __version__
    schema_version: int = SCHEMA_VERSION
    # the checkpoint's (manifest source.fingerprint): another export of it may embed queries; absent in older ones
    model_fingerprint: str | None = None

    def rows(self) -> list[tuple[str, str]]:
        return [("app", APP), ("schema_version", str(self.schema_version)), ("model_dir", self.model_dir),
                ("model_sha256", self.model_sha256), ("family", self.family), ("dim", str(self.dim)),
                ("clipblip_version", self.clipblip_version),
                *([("model_fingerprint", self.model_fingerprint)] if self.model_fingerprint else [])]


@dataclass(frozen=True)
class Entry:
    """One indexed file (without its vector); a video's carries its duration in seconds."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    duration: float | None = None  # None: a photo

    @property
    def is_video(self) -> bool:
        return self.duration is not None


@dataclass(frozen=True)
class Row:
    """What one stored vector stands for: a photo, or a segment of a video (seconds from its start)."""

    path: str
    start: float | None = None
    end: float | None = None
    frame: float | None = None  # the time of the frame that stands for the segment

    @property
    def is_segment(self) -> bool:
        return self.start is not None

    @property
    def key(self) -> str:
        return self.path if self.start is None else f"{self.path}\x1e{self.start!r}"


class Store:
    """An open search database. Use :meth:`create` or :meth:`open`; a context manager closes it."""

    def __init__(self, path: Path, connection: sqlite3.Connection, meta: Meta):
        self.path, self.connection, self.meta = path, connection, meta

    # --- opening ---------------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, meta: Meta) -> Store:
        """A new, empty database at ``path`` (which must not exist), written whole in a temporary file and
        renamed, so that an interrupted creation leaves nothing behind."""
        path = Path(path)
        if path.exists() or path.is_symlink():
            raise DatabaseError(f"{path}: already exists")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise DatabaseError(f"{path}: cannot be created: {parent} is not a folder")
        with replaced_atomically(parent / path.name, DatabaseError) as tmp:
            connection = sqlite3.connect(tmp)
            try:
                connection.execute("PRAGMA journal_mode=DELETE")
                connection.executescript(SCHEMA)
                connection.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.rows())
                connection.commit()
            finally:
                connection.close()
        return cls.open(path, writable=True)

    @classmethod
    def open(cls, path: str | os.PathLike, writable: bool = False) -> Store:
        """An existing database; DatabaseError naming ``path`` when it is missing, not SQLite, not clipblip's
        or of another schema version."""
        path = Path(path)
        if not path.exists():
            raise DatabaseError(f"{path}: no such database; build it with `clipblip index DIR PATH... --db {path}`")
        if path.is_dir():
            raise DatabaseError(f"{path}: is a folder, not a search database")
        if path.stat().st_size == 0:
            raise DatabaseError(f"{path}: an empty file, not a clipblip search database")
        mode = "rw" if writable else "ro"
        try:
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True)
        except sqlite3.Error as e:
            raise DatabaseError(f"{path}: cannot be opened ({e})") from None
        try:
            if writable:
                connection.execute("PRAGMA journal_mode=DELETE")  # a rollback journal, never WAL
            meta = read_meta(path, connection)
            columns = [row[1] for row in connection.execute("PRAGMA table_info(images)")]
            if columns != ["path", "size", "mtime_ns", "sha256", "vector"]:
                raise DatabaseError(f"{path}: damaged search database (its images table is missing or altered)")
            if meta.schema_version < SCHEMA_VERSION and writable:  # schema 1 gains the video tables, in one
                connection.executescript(  # transaction (SQLite's DDL is transactional): all of it or none
                    "BEGIN; " + VIDEO_TABLES.replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ")
                    + f"UPDATE meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version'; COMMIT;")
                meta = read_meta(path, connection)
            if meta.schema_version >= 2:
                for table, expected in (("videos", ["path", "size", "mtime_ns", "sha256", "duration"]),
                                        ("segments", ["path", "start", "end", "frame", "vector"])):
                    if [row[1] for row in connection.execute(f"PRAGMA table_info({table})")] != expected:
                        raise DatabaseError(f"{path}: damaged search database (its {table} table is missing or "
                                            f"altered)")
        except sqlite3.Error as e:
            connection.close()
            raise DatabaseError(f"{path}: not a clipblip search database, or damaged ({e})") from None
        except BaseException:
            connection.close()
            raise
        return cls(path, connection, meta)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            self.connection.rollback()
        self.close()

    # --- reading ---------------------------------------------------------------------------------------

    def _query(self, sql: str, params: Iterable = ()) -> sqlite3.Cursor:
        try:
            return self.connection.execute(sql, tuple(params))
        except sqlite3.DatabaseError as e:
            raise DatabaseError(f"{self.path}: damaged search database ({e})") from None

    @property
    def has_videos(self) -> bool:
        """Whether the database has the video tables (schema 2; a schema-1 one opened read-only has none)."""
        return self.meta.schema_version >= 2

    def count(self) -> int:
        """Stored vectors: photos and video segments."""
        segments = self._query("SELECT COUNT(*) FROM segments").fetchone()[0] if self.has_videos else 0
        return int(self._query("SELECT COUNT(*) FROM images").fetchone()[0]) + int(segments)

    def entries(self) -> dict[str, Entry]:
        """Every indexed file by path, photos and videos (no vectors)."""
        found = {row[0]: Entry(*row) for row in self._query("SELECT path, size, mtime_ns, sha256 FROM images")}
        if self.has_videos:
            found.update((row[0], Entry(*row)) for row in
                         self._query("SELECT path, size, mtime_ns, sha256, duration FROM videos"))
        return found

    def vector_rows(self, sql: str, params: Iterable = ()) -> Iterable[tuple[tuple, np.ndarray]]:
        """(the row's other columns, its vector) for each row of ``sql``, whose last column is the vector."""
        dim = self.meta.dim
        for *columns, blob in self._query(sql, params):
            vector = np.frombuffer(blob, dtype=np.float32) if isinstance(blob, bytes) else None
            if vector is None or vector.shape != (dim,):
                raise DatabaseError(f"{self.path}: damaged search database (the vector of {columns[0]} is not "
                                    f"{dim} float32 values)")
            yield tuple(columns), vector

    def vectors(self) -> tuple[list[Row], np.ndarray]:
        """Every photo (in path order), then every video segment (by path and start), and its vector, float32
        (N, dim), in one read."""
        rows, vectors = [], []
        for (path,), vector in self.vector_rows("SELECT path, vector FROM images ORDER BY path"):
            rows.append(Row(path))
            vectors.append(vector)
        if self.has_videos:
            for (path, start, end, frame), vector in self.vector_rows(
                    'SELECT path, start, "end", frame, vector FROM segments ORDER BY path, start'):
                rows.append(Row(path, float(start), float(end), float(frame)))
                vectors.append(vector)
        return rows, (np.stack(vectors) if vectors else np.zeros((0, self.meta.dim), np.float32))

    def segments(self, path: str) -> list[Row]:
        """The segments of one indexed video, by start (none for a photo or a path not indexed)."""
        if not self.has_videos:
            return []
        return [Row(path, float(a), float(b), float(c)) for a, b, c in self._query(
            'SELECT start, "end", frame FROM segments WHERE path = ? ORDER BY start', (path,))]

    def vector_of(self, path: str, at: float | None = None) -> np.ndarray | None:
        """The stored vector of an indexed photo, or of the segment of an indexed video shown at ``at`` seconds
        (default: its first); None when the path is not a row (or the video has no segment there)."""
        if at is None:
            for _, vector in self.vector_rows("SELECT path, vector FROM images WHERE path = ?", (path,)):
                return vector
        if not self.has_videos:
            return None
        if at is None:
            sql, params = "SELECT path, vector FROM segments WHERE path = ? ORDER BY start LIMIT 1", (path,)
        else:
            sql = ('SELECT path, vector FROM segments WHERE path = ? AND start <= ? AND "end" >= ? '
                   'ORDER BY start DESC LIMIT 1')
            params = (path, float(at), float(at))
        for _, vector in self.vector_rows(sql, params):
            return vector
        return None

    # --- writing (each call's changes are committed by :meth:`commit`) ------------------------------------

    def put(self, entry: Entry, vector: np.ndarray) -> None:
        vector = np.ascontiguousarray(vector, dtype=np.float32)
        if vector.shape != (self.meta.dim,):
            raise ValueError(f"a vector of shape {vector.shape}; the database holds ({self.meta.dim},)")
        self._query("INSERT OR REPLACE INTO images (path, size, mtime_ns, sha256, vector) VALUES (?, ?, ?, ?, ?)",
                    (entry.path, entry.size, entry.mtime_ns, entry.sha256, vector.tobytes()))

    def put_video(self, entry: Entry, segments) -> None:
        """A video's row and its segments (:class:`~.segments.Segment`), replacing any it had."""
        rows = []
        for segment in segments:
            vector = np.ascontiguousarray(segment.vector, dtype=np.float32)
            if vector.shape != (self.meta.dim,):
                raise ValueError(f"a vector of shape {vector.shape}; the database holds ({self.meta.dim},)")
            rows.append((entry.path, segment.start, segment.end, segment.frame, vector.tobytes()))
        self.remove([entry.path])
        self._query("INSERT INTO videos (path, size, mtime_ns, sha256, duration) VALUES (?, ?, ?, ?, ?)",
                    (entry.path, entry.size, entry.mtime_ns, entry.sha256, float(entry.duration or 0.0)))
        try:
            self.connection.executemany('INSERT INTO segments (path, start, "end", frame, vector) VALUES '
                                        '(?, ?, ?, ?, ?)', rows)
        except sqlite3.DatabaseError as e:
            raise DatabaseError(f"{self.path}: damaged search database ({e})") from None

    def touch(self, entry: Entry) -> None:
        """New size and mtime for a file whose content (sha256) is unchanged."""
        table = "videos" if entry.is_video else "images"
        self._query(f"UPDATE {table} SET size = ?, mtime_ns = ? WHERE path = ?",
                    (entry.size, entry.mtime_ns, entry.path))

    def remove(self, paths: Iterable[str]) -> None:
        for path in paths:
            self._query("DELETE FROM images WHERE path = ?", (path,))
            if self.has_videos:
                self._query("DELETE FROM videos WHERE path = ?", (path,))
                self._query("DELETE FROM segments WHERE path = ?", (path,))

    def setting(self, key: str) -> str | None:
        """A value of the meta table beyond :class:`Meta`'s (the frame options a database's videos were indexed
        with), or None."""
        row = self._query("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str) -> None:
        self._query("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def set_model_dir(self, model_dir: str) -> None:
        self._query("UPDATE meta SET value = ? WHERE key = 'model_dir'", (model_dir,))

    def commit(self) -> None:
        try:
            self.connection.commit()
        except sqlite3.Error as e:
            raise DatabaseError(f"{self.path}: cannot be written ({e})") from None


def read_meta(path: Path, connection: sqlite3.Connection) -> Meta:
    try:
        values = dict(connection.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            raise DatabaseError(f"{path}: an SQLite database, but not a clipblip search database (no meta table)") \
                from None
        raise
    if values.get("app") != APP:
        raise DatabaseError(f"{path}: an SQLite database, but not a clipblip search database")
    version = values.get("schema_version")
    if version not in {str(v) for v in READS}:
        raise DatabaseError(f"{path}: search database schema version {version} is not supported (this clipblip "
                            f"reads versions {', '.join(map(str, READS))}); index the photos again into a new "
                            f"database")
    try:
        return Meta(model_dir=values["model_dir"], model_sha256=values["model_sha256"], family=values["family"],
                    dim=int(values["dim"]), clipblip_version=values["clipblip_version"],
                    schema_version=int(version), model_fingerprint=values.get("model_fingerprint"))
    except (KeyError, ValueError) as e:
        raise DatabaseError(f"{path}: damaged search database (bad or missing meta entry {e})") from None
