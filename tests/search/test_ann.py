"""Approximate search above ann.EXACT_LIMIT: same top hits as exact search on small data, the DB.hnsw cache
built on the first query, reused, and rebuilt when the database changes; exact search without faiss."""

from __future__ import annotations

import os

import numpy as np
import pytest

from clipblip.search import Meta, Store, ann, search
from clipblip.search.store import Entry

pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'clipblip[search]')")

DIM = 16


class FakeEngine:
    """Embeds a text as the vector given for it (search() takes an engine, so no model is needed)."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors

    def embed_texts(self, texts):
        return np.stack([self.vectors[t] for t in texts])


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def make_db(path, vectors: np.ndarray, prefix: str = "/photos/img") -> list[str]:
    with Store.create(path, Meta(model_dir="/models/x", model_sha256="0" * 64, family="clip", dim=DIM)) as store:
        names = [f"{prefix}{i:03d}.jpg" for i in range(len(vectors))]
        for name, vector in zip(names, vectors):
            store.put(Entry(name, 1, 1, "0" * 64), vector)
        store.commit()
    return names


def rows_of(names):
    """(path, content sha256) pairs as make_db and the test store them, in path order."""
    return [(name, "0" * 64) for name in sorted(names)]


def exact(vectors, names, query, k):
    scores = vectors @ query
    return [names[i] for i in np.argsort(-scores, kind="stable")[:k]]


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    vectors = unit(rng.standard_normal((60, DIM)))
    queries = unit(rng.standard_normal((8, DIM)))
    db = tmp_path / "photos.db"
    names = make_db(db, vectors)
    engine = FakeEngine({f"q{i}": q for i, q in enumerate(queries)})
    return db, vectors, queries, names, engine


def test_small_database_stays_exact_and_writes_no_cache(data):
    db, vectors, queries, names, engine = data
    hits = search(db, text="q0", k=5, engine=engine)
    assert [h.path for h in hits] == exact(vectors, names, queries[0], 5)
    assert not ann.cache_path(db).exists()


def test_ann_path_matches_exact_and_caches(data, monkeypatch):
    db, vectors, queries, names, engine = data
    monkeypatch.setattr(ann, "EXACT_LIMIT", 5)
    cache = ann.cache_path(db)
    assert cache == db.parent / "photos.db.hnsw"
    for i, q in enumerate(queries):
        hits = search(db, text=f"q{i}", k=5, engine=engine)
        want = exact(vectors, names, q, 5)
        assert len(set(h.path for h in hits) & set(want)) / 5 == 1.0  # recall@5
        assert [h.score for h in hits] == pytest.approx(sorted((vectors @ q)[[names.index(w) for w in want]],
                                                               reverse=True), abs=1e-5)
    assert cache.exists() and ann.read_stamp(cache) == ann.stamp(rows_of(names))
    assert not [p for p in os.listdir(db.parent) if p.endswith(".tmp")]

    # reused: a second query does not rewrite it
    os.utime(cache, ns=(1_000_000_000, 1_000_000_000))
    search(db, text="q0", k=5, engine=engine)
    assert cache.stat().st_mtime_ns == 1_000_000_000

    # the database changes (a new image, best for q0): the cache is rebuilt and finds it
    with Store.open(db, writable=True) as store:
        store.put(Entry("/photos/new.jpg", 1, 1, "0" * 64), queries[0])
        store.commit()
    hits = search(db, text="q0", k=3, engine=engine)
    assert hits[0].path == "/photos/new.jpg" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert cache.stat().st_mtime_ns != 1_000_000_000
    assert ann.read_stamp(cache) == ann.stamp(rows_of(names + ["/photos/new.jpg"]))

    # and a removal too (same count would not hide it: the stamp hashes the paths)
    with Store.open(db, writable=True) as store:
        store.remove(["/photos/new.jpg", names[0]])
        store.put(Entry("/photos/other.jpg", 1, 1, "0" * 64), vectors[0])
        store.commit()
    hits = search(db, text="q0", k=5, engine=engine)
    remaining = [n for n in names if n != names[0]] + ["/photos/other.jpg"]
    assert ann.read_stamp(cache) == ann.stamp(rows_of(remaining))
    assert "/photos/new.jpg" not in [h.path for h in hits]

    # a file re-embedded after its content changed (same path, new hash): rebuilt, new vector found
    with Store.open(db, writable=True) as store:
        store.put(Entry("/photos/other.jpg", 2, 2, "1" * 64), queries[1])
        store.commit()
    hits = search(db, text="q1", k=1, engine=engine)
    assert hits[0].path == "/photos/other.jpg" and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_k_above_count_and_damaged_cache(data, monkeypatch):
    db, vectors, queries, names, engine = data
    monkeypatch.setattr(ann, "EXACT_LIMIT", 5)
    hits = search(db, text="q1", k=100, engine=engine)
    assert sorted(h.path for h in hits) == sorted(names)
    ann.cache_path(db).write_bytes(b"not an index")
    hits = search(db, text="q1", k=5, engine=engine)
    assert [h.path for h in hits] == exact(vectors, names, queries[1], 5)
    assert ann.read_stamp(ann.cache_path(db)) == ann.stamp(rows_of(names))


def test_without_faiss_stays_exact_and_says_so_once(data, monkeypatch, capsys):
    db, vectors, queries, names, engine = data
    monkeypatch.setattr(ann, "EXACT_LIMIT", 5)
    monkeypatch.setattr(ann, "_warned", False)
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)  # import faiss raises ImportError
    for _ in range(2):
        hits = search(db, text="q2", k=5, engine=engine)
        assert [h.path for h in hits] == exact(vectors, names, queries[2], 5)
    assert capsys.readouterr().err.count("faiss-cpu") == 1
    assert not ann.cache_path(db).exists()
