"""The search database: one SQLite file (stdlib ``sqlite3``, rollback journal, no WAL) holding a vector per image.

Tables::

    meta(key TEXT PRIMARY KEY, value TEXT)        -- app, schema_version, model_dir, model_sha256,
                                                  -- family, dim, clipblip_version[, model_fingerprint]
    images(path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT, vector BLOB)

``vector`` is the image's L2-normalised embedding as float32 bytes (``dim`` of them). Paths are absolute
as indexed; searching needs none of them to exist, so a database can be copied and searched elsewhere.
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

__all__ = ["APP", "SCHEMA_VERSION", "Entry", "Meta", "Store"]

APP = "clipblip-search"
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    vector BLOB NOT NULL
);
"""


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
    """One indexed file (without its vector)."""

    path: str
    size: int
    mtime_ns: int
    sha256: str


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

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM images").fetchone()[0])

    def entries(self) -> dict[str, Entry]:
        """Every indexed file by path (no vectors)."""
        return {row[0]: Entry(*row) for row in self._query("SELECT path, size, mtime_ns, sha256 FROM images")}

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """Every path (in path order) and its vector, float32 (N, dim), in one read."""
        paths, rows = [], []
        dim = self.meta.dim
        for path, blob in self._query("SELECT path, vector FROM images ORDER BY path"):
            vector = np.frombuffer(blob, dtype=np.float32) if isinstance(blob, bytes) else None
            if vector is None or vector.shape != (dim,):
                raise DatabaseError(f"{self.path}: damaged search database (the vector of {path} is not "
                                    f"{dim} float32 values)")
            paths.append(path)
            rows.append(vector)
        return paths, (np.stack(rows) if rows else np.zeros((0, dim), np.float32))

    def vector_of(self, path: str) -> np.ndarray | None:
        """The stored vector of one indexed path (float32, (dim,)), or None when the path is not a row."""
        row = self._query("SELECT vector FROM images WHERE path = ?", (path,)).fetchone()
        if row is None:
            return None
        vector = np.frombuffer(row[0], dtype=np.float32) if isinstance(row[0], bytes) else None
        if vector is None or vector.shape != (self.meta.dim,):
            raise DatabaseError(f"{self.path}: damaged search database (the vector of {path} is not "
                                f"{self.meta.dim} float32 values)")
        return vector

    # --- writing (each call's changes are committed by :meth:`commit`) ------------------------------------

    def put(self, entry: Entry, vector: np.ndarray) -> None:
        vector = np.ascontiguousarray(vector, dtype=np.float32)
        if vector.shape != (self.meta.dim,):
            raise ValueError(f"a vector of shape {vector.shape}; the database holds ({self.meta.dim},)")
        self._query("INSERT OR REPLACE INTO images (path, size, mtime_ns, sha256, vector) VALUES (?, ?, ?, ?, ?)",
                    (entry.path, entry.size, entry.mtime_ns, entry.sha256, vector.tobytes()))

    def touch(self, entry: Entry) -> None:
        """New size and mtime for a file whose content (sha256) is unchanged."""
        self._query("UPDATE images SET size = ?, mtime_ns = ? WHERE path = ?", (entry.size, entry.mtime_ns, entry.path))

    def remove(self, paths: Iterable[str]) -> None:
        for path in paths:
            self._query("DELETE FROM images WHERE path = ?", (path,))

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
    if version != str(SCHEMA_VERSION):
        raise DatabaseError(f"{path}: search database schema version {version} is not supported (this clipblip "
                            f"reads version {SCHEMA_VERSION}); index the photos again into a new database")
    try:
        return Meta(model_dir=values["model_dir"], model_sha256=values["model_sha256"], family=values["family"],
                    dim=int(values["dim"]), clipblip_version=values["clipblip_version"],
                    schema_version=int(version), model_fingerprint=values.get("model_fingerprint"))
    except (KeyError, ValueError) as e:
        raise DatabaseError(f"{path}: damaged search database (bad or missing meta entry {e})") from None
