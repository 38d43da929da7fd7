"""`POST /v1/search` on `clipblip serve --db DB`: the CLI's search, with the served engines when they match."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..manifest import MANIFEST_NAME, sha256_of
from .photos import Photos
from .service import ModelService

__all__ = ["SearchService"]


class SearchService:
    """A search database and the engines that query it: the served model whose manifest built the
    database (else that folder, loaded once), and the served BLIP retrieval models for re-ranking."""

    def __init__(self, db: str | Path, services: dict[str, ModelService], **engine_options: Any):
        from ..search.indexer import open_model
        from ..search.store import Store

        self.db = str(db)
        with Store.open(self.db) as store:
            meta = store.meta
        self.family = meta.family
        same = {name: s.engine for name, s in services.items()
                if sha256_of(Path(s.engine.folder) / MANIFEST_NAME) == meta.model_sha256}
        self.model = next(iter(same), Path(meta.model_dir).name)  # the served name, else the folder's
        self.engine = next(iter(same.values())) if same else open_model(meta.model_dir, **engine_options)
        self.rerankers = {name: s.engine for name, s in services.items() if s.family == "blip" and "match" in s.tasks}
        if meta.family == "blip":
            self.rerankers.setdefault("", self.engine)  # the database's own model re-ranks by default
        self.photos = Photos(self.db, engine_options.get("max_image_pixels"))

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/database`` says (no path: the page needs none)."""
        self.photos.refresh()
        return {"family": self.family, "count": len(self.photos.by_id), "model": self.model,
                "random_weights": self.engine.manifest.random_weights,
                "rerank_models": sorted(n for n in self.rerankers if n), "rerank_default": "" in self.rerankers}

    def query(self, text: str | None, image: bytes | None, k: int, rerank: bool,
              rerank_model: str | None, like: str | None = None) -> list[dict[str, Any]]:
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
        hits = search(self.db, text=text, image=image, like=like_path, k=k, rerank=rerank, engine=self.engine,
                      itm_engine=itm)
        ids = self.photos.ids()
        return [{**hit.to_dict(), "id": ids.get(hit.path), "name": os.path.basename(hit.path)} for hit in hits]
