"""Approximate nearest-neighbour search for large databases: an HNSW graph (faiss ``IndexHNSWFlat``, inner
product, which on L2-normalised vectors is the cosine) cached beside the database as ``DB.hnsw``.

Used only above :data:`EXACT_LIMIT` vectors; below it exact numpy search is both fast enough and exact.
The cache file is what ``faiss.write_index`` writes, followed by a trailer that records a stamp of the
rows it was built from (their count and the sha256 of their paths with each file's content hash, in path
order, the order of ``Store.vectors()``, whose positions are the index's ids). A row's vector is a function
of its file's content (the model is fixed per database), so a file re-embedded after it changed changes the
stamp too, without reading any vector. ``faiss.read_index`` reads the index and ignores the trailer. A
cache whose stamp differs from the database's (a row added, removed, renamed or re-embedded) is rebuilt;
one that is missing or unreadable is built. It is written to a temporary file and renamed into place, so
that a reader never sees half a cache.

faiss-cpu is optional (``pip install 'clipblip[search]'``); without it search stays exact.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
from pathlib import Path

import numpy as np

from ..files import replaced_atomically

__all__ = ["EXACT_LIMIT", "M", "EF_CONSTRUCTION", "EF_SEARCH", "available", "cache_path", "stamp", "AnnIndex",
           "load_or_build"]

# Exact search (one float32 matrix-vector product over (N, 512) and a full argsort, as query.py does it) takes
# 0.9 ms at 10k vectors, 5.7-5.9 ms at 50k and 13.6-14.3 ms at 100k on this 2-core machine (Intel Xeon, see
# benchmarks/results/2026-11-27-retrieval): it passes ~10 ms near 75k vectors, so above that HNSW is used.
EXACT_LIMIT = 75_000
M = 32  # graph neighbours per node
EF_CONSTRUCTION = 40  # faiss's default: build time grows with it; recall is set by EF_SEARCH
# candidates explored per query (at least the number asked for): recall@10 0.97 at 1M vectors in ~4 ms on
# synthetic embeddings (benchmarks/retrieval.py; 256 gave 0.94)
EF_SEARCH = 512

MAGIC = b"CLIPBLIP-HNSW-STAMP1"
_warned = False


def available(warn: bool = False) -> bool:
    """Whether faiss can be imported; with ``warn``, says once on stderr that search stays exact."""
    global _warned
    try:
        import faiss  # noqa: F401  (is it installed?)
    except ImportError:
        if warn and not _warned:
            _warned = True
            print(f"clipblip: note: the database holds more than {EXACT_LIMIT} vectors; install faiss-cpu "
                  f"(pip install 'clipblip[search]') for fast approximate search; searching exactly",
                  file=sys.stderr)
        return False
    return True


def cache_path(db: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(db)}.hnsw")


def stamp(rows: list[tuple[str, str]]) -> str:
    """The rows an index was built from: their count and the sha256 of their (path, content sha256) pairs
    joined, in path order."""
    joined = "\0".join(f"{path}\x1f{content}" for path, content in rows)
    return f"{len(rows)}:{hashlib.sha256(joined.encode('utf-8', 'surrogatepass')).hexdigest()}"


def read_stamp(path: Path) -> str | None:
    """The stamp in a cache file's trailer, or None when it has none (or cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            tail = len(MAGIC) + 4
            if size < tail:
                return None
            f.seek(size - tail)
            end = f.read(tail)
            if end[4:] != MAGIC:
                return None
            (length,) = struct.unpack("<I", end[:4])
            if length > size - tail:
                return None
            f.seek(size - tail - length)
            return f.read(length).decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None


class AnnIndex:
    """An HNSW index over a database's vectors; id ``i`` is ``rows[i]`` (a photo or a video segment)."""

    def __init__(self, index, rows: list):
        self.index, self.rows = index, rows

    @classmethod
    def build(cls, vectors: np.ndarray, rows: list) -> AnnIndex:
        import faiss

        index = faiss.IndexHNSWFlat(vectors.shape[1], M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = EF_CONSTRUCTION
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return cls(index, rows)

    def search(self, query: np.ndarray, n: int, ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ids and inner products of the (approximately) ``n`` nearest, best first."""
        import faiss

        n = min(n, self.index.ntotal)
        if n < 1:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(ef_search or EF_SEARCH, n)
        scores, ids = self.index.search(np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1), n,
                                        params=params)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def save(self, path: Path, rows_stamp: str) -> None:
        """Writes the index and its stamp to a temporary file beside ``path`` and renames it into place."""
        import faiss

        with replaced_atomically(path, OSError) as tmp:
            faiss.write_index(self.index, os.fspath(tmp))
            data = rows_stamp.encode("ascii")
            with open(tmp, "ab") as f:
                f.write(data + struct.pack("<I", len(data)) + MAGIC)


def stored_rows(store) -> list[tuple]:
    """Every (row, content sha256) of the database, in the order of ``store.vectors()``, without the vectors."""
    from .store import Row

    rows = [(Row(path), sha) for path, sha in store._query("SELECT path, sha256 FROM images ORDER BY path")]
    if store.has_videos:
        rows += [(Row(path, float(start), float(end), float(frame)), sha) for path, start, end, frame, sha in
                 store._query('SELECT s.path, s.start, s."end", s.frame, v.sha256 FROM segments s JOIN videos v '
                              'ON v.path = s.path ORDER BY s.path, s.start')]
    return rows


def load_or_build(store, quiet: bool = False) -> AnnIndex:
    """The database's HNSW index: its cache when the stamp matches, otherwise built from the stored
    vectors and cached (a cache that cannot be written is only reported)."""
    import faiss

    path = cache_path(store.path)
    stored = stored_rows(store)
    rows = [row for row, _ in stored]
    rows_stamp = stamp([(row.key, sha) for row, sha in stored])
    if read_stamp(path) == rows_stamp:
        try:
            index = faiss.read_index(os.fspath(path))
            if index.ntotal == len(rows) and index.d == store.meta.dim:
                return AnnIndex(index, rows)
        except RuntimeError:
            pass
    if not quiet:
        print(f"clipblip: building the approximate search index {path} for {len(rows)} vectors (once; it is "
              f"rebuilt when the database changes)", file=sys.stderr)
    fresh, vectors = store.vectors()
    if fresh != rows:  # the database changed between the two reads: build from what was read, cache nothing
        rows_stamp = None
    ann = AnnIndex.build(vectors, fresh)
    del vectors
    try:
        if rows_stamp is not None:
            ann.save(path, rows_stamp)
    except (OSError, RuntimeError) as e:
        print(f"clipblip: note: cannot write {path} ({e}); it will be built again next time", file=sys.stderr)
    return ann
