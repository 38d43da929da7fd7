"""Queries: exact cosine search over every stored vector, and optional re-ranking with BLIP's ITM head."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..defaults import MAX_BATCH, MAX_IMAGE_PIXELS
from ..engine.base import missing_towers, tower_refusal
from ..errors import ClipblipError, DatabaseError, UsageError, WrongModelError
from ..families import title as family_title
from ..manifest import Manifest
from . import ann
from .indexer import model_sha256, open_model
from .store import Meta, Row, Store

__all__ = ["SearchHit", "search", "rerank_count", "query_model_dir", "same_checkpoint"]


@dataclass(frozen=True)
class SearchHit:
    """One photo or video segment found: ``score`` is the cosine similarity, or with re-ranking BLIP's ITM match
    probability (the cosine then in ``itc``); a segment's ``start`` and ``end`` (seconds) and ``frame``, the time
    of the frame that stands for it."""

    path: str
    score: float
    itc: float | None = None
    start: float | None = None
    end: float | None = None
    frame: float | None = None

    @property
    def is_segment(self) -> bool:
        return self.start is not None

    def to_dict(self) -> dict:
        return {"path": self.path, "score": self.score, **({} if self.itc is None else {"itc": self.itc}),
                **({} if self.start is None else {"start": self.start, "end": self.end, "frame": self.frame})}

    @classmethod
    def of(cls, row: Row, score: float, itc: float | None = None) -> SearchHit:
        return cls(row.path, score, itc, row.start, row.end, row.frame)


def rerank_count(k: int) -> int:
    """How many cosine candidates re-ranking scores: k × 4, at least 20."""
    return max(4 * k, 20)


def query_model_dir(store: Store, model_dir: str | os.PathLike | None, tower: str | None = None) -> Path:
    """The folder that embeds queries: ``model_dir`` or the database's own. It must hold the manifest the database
    was built with, or be another export of the same checkpoint (:func:`same_checkpoint`), and hold ``tower``
    (the query's: "text" or "image"); refused otherwise."""
    folder = Path(model_dir) if model_dir is not None else Path(store.meta.model_dir)
    if model_dir is None and not folder.is_dir():
        raise DatabaseError(f"{store.path}: its model folder {folder} is not here; give --model DIR (a copy of "
                            f"that folder) to embed the query")
    sha = model_sha256(folder)
    manifest = Manifest.load(folder)
    if sha != store.meta.model_sha256 and not same_checkpoint(store.meta, manifest):
        raise DatabaseError(f"{store.path}: was indexed with another model ({store.meta.model_dir}, manifest sha256 "
                            f"{store.meta.model_sha256[:12]}); {folder} has manifest sha256 {sha[:12]}, so its "
                            f"vectors are not comparable: query with the model that built the database")
    if tower is not None and missing_towers(manifest.towers, (tower,)):
        query = {"text": "a text query", "image": "an image query"}[tower]
        if model_dir is not None:
            raise WrongModelError(tower_refusal(str(folder), manifest.towers, (tower,), query))
        raise WrongModelError(f"{store.path}: was indexed with {folder}, which holds only the {manifest.towers[0]} "
                              f"tower; {query} needs the {tower} tower: give --model DIR, an export of the same "
                              f"checkpoint with --towers {tower} or both")
    return folder


def same_checkpoint(meta: Meta, manifest: Manifest) -> bool:
    """Whether ``manifest`` is another export (other towers, precision or options) of the checkpoint that built the
    database: the same family and checkpoint fingerprint (its weights, preprocessing and tokenizer, recorded at
    export). Databases and folders from before fingerprints never match."""
    fingerprint = manifest.source.get("fingerprint")
    return bool(fingerprint) and fingerprint == meta.model_fingerprint and manifest.family == meta.family


def search(db: str | os.PathLike, text: str | None = None, image=None, k: int = 10, *,
           model_dir: str | os.PathLike | None = None, rerank: bool = False,
           itm_dir: str | os.PathLike | None = None, provider: str = "auto", threads: int | None = None,
           max_batch: int = MAX_BATCH, max_image_pixels: int | None = MAX_IMAGE_PIXELS, engine=None,
           itm_engine=None, on_error: Callable[[str, ClipblipError], None] | None = None,
           like: str | None = None, like_at: float | None = None) -> list[SearchHit]:
    """The ``k`` photos and video segments of database ``db`` nearest to a text, an image (a path, PIL image, array
    or bytes), or ``like``, a path indexed in the database (its stored vector is the query: "more like this"; for a
    video, the segment shown at ``like_at`` seconds, default its first), best first by cosine similarity (k above
    the count gives every row).

    The query is embedded with the database's own model folder, or ``model_dir`` (which must hold the same
    manifest, or be another export of the same checkpoint, such as its text tower alone). ``rerank``: the ``rerank_count(k)`` best by cosine are ordered by BLIP's ITM match
    probability, with ``itm_dir`` (a BLIP retrieval folder; default: the database's model when it is one);
    a candidate whose file cannot be read is left out and passed to ``on_error(path, error)``.
    """
    if sum(query is not None for query in (text, image, like)) != 1:
        raise UsageError("search: give one query: a text, an image, or an indexed photo (like)")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UsageError(f"-k {k}: must be a whole number, at least 1")
    if rerank and text is None:
        raise UsageError("--rerank: BLIP's ITM head scores an image against a text; give --text")
    options = {"provider": provider, "threads": threads, "max_batch": max_batch, "max_image_pixels": max_image_pixels}
    with Store.open(db) as store:
        if rerank and itm_dir is None and itm_engine is None and store.meta.family != "blip":
            raise UsageError(f"--rerank: {db} holds {family_title(store.meta.family)} embeddings; "
                             f"give --rerank ITM_DIR, "
                             f"a BLIP retrieval folder (clipblip export Salesforce/blip-itm-base-coco --out DIR)")
        stored = None
        if like is not None:
            stored = store.vector_of(str(like), like_at)
            if stored is None:
                at = "" if like_at is None else f" at {like_at:g} s"
                raise UsageError(f"like {like}{at}: not a photo or video segment of {db}")
        elif engine is None:
            engine = open_model(query_model_dir(store, model_dir, "text" if text is not None else "image"), **options)
        index = None  # above ann.EXACT_LIMIT vectors (and with faiss): the HNSW index, cached beside the db
        if store.count() > ann.EXACT_LIMIT and ann.available(warn=True):
            index = ann.load_or_build(store)
            rows = index.rows
        else:
            rows, vectors = store.vectors()
        own_model = store.meta.model_dir
    if stored is not None:
        query = stored
    else:
        query = (engine.embed_texts([text]) if text is not None else engine.embed_images([image]))[0]
    query = query / max(float(np.linalg.norm(query)), 1e-12)
    if index is not None:
        order, found = index.search(query, rerank_count(k) if rerank else k)
        scores = np.zeros(len(rows), np.float32)
        scores[order] = found
    else:
        scores = vectors @ query.astype(np.float32) if len(rows) else np.zeros(0, np.float32)
        order = np.argsort(-scores, kind="stable")
    if not rerank:
        return [SearchHit.of(rows[i], float(scores[i])) for i in order[:k]]
    candidates = [int(i) for i in order[: rerank_count(k)]]
    if not candidates:
        return []
    if itm_engine is None:
        from ..engine.opening import open_engine

        folder = itm_dir if itm_dir is not None else own_model
        itm_engine = open_engine(folder, "match", needed_by="--rerank (BLIP's ITM head)", **options)
    images, errors = candidate_images([rows[i] for i in candidates], max_image_pixels)
    readable = [j for j in range(len(candidates)) if j not in errors]
    match, failed = (itm_engine.match([images[j] for j in readable], [text], return_errors=True) if readable
                     else (None, {}))
    errors.update({readable[j]: error for j, error in failed.items()})
    for j, error in sorted(errors.items()):
        if on_error is not None:
            on_error(rows[candidates[j]].path, error)
    itm = {j: float(match.itm[n, 0]) for n, j in enumerate(readable) if n not in failed}
    kept = sorted(itm, key=lambda j: -itm[j])  # stable: ties keep the cosine order
    return [SearchHit.of(rows[candidates[j]], itm[j], float(scores[candidates[j]])) for j in kept[:k]]


def candidate_images(rows: list[Row], max_image_pixels: int | None) -> tuple[list, dict[int, ClipblipError]]:
    """What ITM scores for each row: a photo's path, a segment's frame (decoded here); errors by position."""
    images: list = [None] * len(rows)
    errors: dict[int, ClipblipError] = {}
    for j, row in enumerate(rows):
        if not row.is_segment:
            images[j] = row.path
            continue
        from ..video import frame_at

        try:
            images[j] = frame_at(row.path, row.frame, max_pixels=max_image_pixels).image
        except ClipblipError as e:
            errors[j] = e
    return images, errors
