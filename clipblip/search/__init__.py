"""Search a photo collection: index image files into an SQLite database, query it by text or image.

Torch-free: the engine, numpy and the standard library's ``sqlite3``::

    from clipblip.search import index_paths, search

    report = index_paths("photos.db", "models/clip", ["photos/"])     # IndexReport(embedded=..., ...)
    hits = search("photos.db", text="a dog on a beach", k=10)          # [SearchHit(path, score, itc), ...]
"""

from .indexer import IndexReport, index_paths
from .query import SearchHit, search
from .store import SCHEMA_VERSION, Meta, Store

__all__ = ["IndexReport", "SearchHit", "index_paths", "search", "Store", "Meta", "SCHEMA_VERSION"]
