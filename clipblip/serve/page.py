"""The page people open in a browser (``GET /``, from files shipped in the package) and the photo routes
it shows results with (``/v1/photos/{id}``, behind the API key like every ``/v1`` route).

The page needs no key to load; everything it shows comes from ``/v1``, fetched with the key in a header.
Its Content-Security-Policy forbids inline script and anything from another origin."""

from __future__ import annotations

import asyncio
from importlib import resources

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, Response

from ..errors import ClipblipError
from .errors import ApiError
from .photos import THUMBNAIL_SIZES, Photos

__all__ = ["CSP", "page_routes", "photo_routes"]

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PAGE_FILES = {"page.js": "text/javascript; charset=utf-8", "page.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"}


def page_file(name: str) -> bytes:
    return resources.files(__package__).joinpath("page", name).read_bytes()


def page_routes() -> APIRouter:
    """``GET /`` and its two assets, read once from the package (a fixed set: no name reaches the disk)."""
    files = {name: page_file(name) for name in ("index.html", *PAGE_FILES)}
    router = APIRouter(include_in_schema=False)

    @router.api_route("/", methods=["GET", "HEAD"])
    async def index():
        return Response(files["index.html"], media_type="text/html; charset=utf-8",
                        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    @router.get("/page/{name}")
    async def asset(name: str):
        if name not in PAGE_FILES:
            raise ApiError(404, "NotFound", f"GET /page/{name[:80]}: no such file of the page")
        return Response(files[name], media_type=PAGE_FILES[name],
                        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    return router


def photo_routes(photos: Photos) -> APIRouter:
    """The photos of the served database, by id: a thumbnail, or the original file."""
    router = APIRouter()
    cache = {"Cache-Control": "private, max-age=86400", **SECURITY_HEADERS}

    @router.get("/photos/{photo_id}/thumbnail")
    async def thumbnail(photo_id: str, size: int = Query(256, description=f"one of {THUMBNAIL_SIZES}")):
        try:
            data = await asyncio.to_thread(photos.thumbnail, photo_id, size)
        except ClipblipError as e:
            raise ApiError.of(e) from None  # 404 not a photo or gone, 409 changed, 413 a bomb
        return Response(data, media_type="image/jpeg", headers=cache)

    @router.get("/photos/{photo_id}")
    async def original(photo_id: str):
        try:
            path, media_type = await asyncio.to_thread(photos.original, photo_id)
        except ClipblipError as e:
            raise ApiError.of(e) from None
        return FileResponse(path, media_type=media_type, headers=cache)

    return router

