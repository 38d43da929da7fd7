"""`POST /v1/search` on `clipblip serve --db DB`: the CLI's search, with the served engines when they match."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..engine.base import missing_towers
from ..errors import UsageError, WrongModelError
from ..families import TOWERS
from ..manifest import MANIFEST_NAME, Manifest, sha256_of
from .photos import Photos
from .service import ModelService

__all__ = ["SearchService"]


def holds(manifest: Manifest, tower: str) -> bool:
    """Whether a folder holds ``tower`` (every folder does but one exported with the other tower alone)."""
    return not missing_towers(manifest.towers, (tower,))


class SearchService:
    """A search database and the engines that query it: for text and for image queries, a served model that built
    the database (its manifest) or another export of its checkpoint that holds the tower (a text tower alone
    serves text queries), else the database's model folder, loaded once; and the served BLIP retrieval models for
    re-ranking."""

    def __init__(self, db: str | Path, services: dict[str, ModelService], **engine_options: Any):
        from ..search.indexer import open_model
        from ..search.query import same_checkpoint
        from ..search.store import Store

        self.db = str(db)
        with Store.open(self.db) as store:
            meta = store.meta
        self.family = meta.family
        exact = {name: s.engine for name, s in services.items()
                 if sha256_of(Path(s.engine.folder) / MANIFEST_NAME) == meta.model_sha256}
        same = {**exact, **{name: s.engine for name, s in services.items()
                            if name not in exact and same_checkpoint(meta, s.engine.manifest)}}
        self.engines: dict[str, tuple[str, Any]] = {}  # tower -> (name, engine) that embeds its queries
        for tower in TOWERS:
            for name, engine in same.items():
                if holds(engine.manifest, tower):
                    self.engines.setdefault(tower, (name, engine))
        own = Path(meta.model_dir)
        if not same or (len(self.engines) < len(TOWERS) and own.is_dir()
                        and any(holds(Manifest.load(own), t) for t in TOWERS if t not in self.engines)):
            engine = open_model(meta.model_dir, **engine_options)
            for tower in TOWERS:
                if holds(engine.manifest, tower):
                    self.engines.setdefault(tower, (own.name, engine))
        self.model, self.engine = next(iter(self.engines.values()))  # the served name, else the folder's
        self.rerankers = {name: s.engine for name, s in services.items() if s.family == "blip" and "match" in s.tasks}
        if meta.family == "blip":
            self.rerankers.setdefault("", self.engine)  # the database's own model re-ranks by default
        self.photos = Photos(self.db, engine_options.get("max_image_pixels"))

    @property
    def queries(self) -> list[str]:
        """The queries it answers: "text" and "image" where an engine holds that tower, "like" always."""
        return [tower for tower in TOWERS if tower in self.engines] + ["like"]

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/database`` says (no path: the page needs none)."""
        self.photos.refresh()
        return {"family": self.family, "count": len(self.photos.by_id), "model": self.model,
                "random_weights": self.engine.manifest.random_weights, "queries": self.queries,
                "rerank_models": sorted(n for n in self.rerankers if n), "rerank_default": "" in self.rerankers}

    def engine_for(self, tower: str):
        """The engine that embeds a query of ``tower``; WrongModelError naming what holds only the other one."""
        if tower in self.engines:
            return self.engines[tower][1]
        held = ", ".join(f"{name} ({engine.manifest.towers[0]} tower alone)" for name, engine in self.engines.values())
        raise WrongModelError(f"{self.db}: no model here embeds {tower} queries for it ({held}); serve an export of "
                              f"the same checkpoint that holds the {tower} tower (--towers {tower} or both)")

    def query(self, text: str | None, image: bytes | None, k: int, rerank: bool,
              rerank_model: str | None, like: str | None = None, like_at: float | None = None) -> list[dict[str, Any]]:
        """The hits as the CLI's --json gives them, each with the photo's ``id`` and file ``name``;
        ``like``: a photo id of the database; runs in a worker thread."""
        from ..search import search

        like_path = self.photos.get(like).path if like is not None else None
        itm = None
        if rerank:
            itm = self.rerankers.get(rerank_model or "")
            if itm is None:
                served = ", ".join(sorted(n for n in self.rerankers if n)) or "none"
                raise UsageError(f"rerank: give rerank_model, a served BLIP retrieval model (served: {served})"
                                 if rerank_model is None else f"rerank_model {rerank_model!r}: not a served BLIP "
                                                              f"retrieval model (served: {served})")
        engine = self.engine if like is not None else self.engine_for("text" if text is not None else "image")
        hits = search(self.db, text=text, image=image, like=like_path, like_at=like_at, k=k, rerank=rerank,
                      engine=engine,
                      itm_engine=itm)
        ids = self.photos.ids()
        return [{**hit.to_dict(), "id": ids.get(hit.path), "name": os.path.basename(hit.path)} for hit in hits]
