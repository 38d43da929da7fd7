"""The page people open in a browser (``GET /``, from files shipped in the package) and the photo routes
it shows results with (``/v1/photos/{id}``, behind the API key like every ``/v1`` route).

The page needs no key to load; everything it shows comes from ``/v1``, fetched with the key in a header. A
``<video>`` element cannot send a header, so a video is played from a link the page asks for with the key
(``/v1/videos/{id}/link``): the stream's URL signed with an HMAC of the key, valid for an hour and for that
video alone; the stream answers HTTP range requests. Its Content-Security-Policy forbids inline script and
anything from another origin."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from importlib import resources

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response

from ..errors import ClipblipError
from .errors import ApiError
from .photos import THUMBNAIL_SIZES, Photos

__all__ = ["CSP", "page_routes", "photo_routes", "video_routes", "LINK_SECONDS"]

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
LINK_SECONDS = 3600  # how long a signed video link plays
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
    async def thumbnail(photo_id: str, size: int = Query(256, description=f"one of {THUMBNAIL_SIZES}"),
                        at: float | None = Query(None, description="a video: the time (s) of one of its segments' "
                                                                   "frames")):
        try:
            data = await asyncio.to_thread(photos.thumbnail, photo_id, size, at)
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



def signature(key: str | None, video_id: str, expires: int) -> str:
    """HMAC-SHA256 of the id and expiry under the API key (a server without a key signs with a random one)."""
    return hmac.new((key or "").encode() or _UNKEYED, f"video:{video_id}:{expires}".encode(), hashlib.sha256).hexdigest()


_UNKEYED = secrets.token_bytes(32)


def video_routes(photos: Photos) -> tuple[APIRouter, APIRouter]:
    """(the keyed route that hands out a signed link to a video, the stream route the link points at)."""
    keyed, signed = APIRouter(), APIRouter()

    @keyed.get("/videos/{video_id}/link")
    async def link(request: Request, video_id: str):
        try:
            video = await asyncio.to_thread(photos.get, video_id)
        except ClipblipError as e:
            raise ApiError.of(e) from None
        if not video.is_video:
            raise ApiError(404, "NotFound", f"photo {video.name}: not a video")
        expires = int(time.time()) + LINK_SECONDS
        sig = signature(request.app.state.settings.api_key, video.id, expires)
        return {"url": f"/v1/videos/{video.id}?expires={expires}&signature={sig}", "expires": expires}

    @signed.get("/videos/{video_id}")
    async def stream(request: Request, video_id: str, expires: int = Query(0), signature_: str = Query(
            "", alias="signature")):
        key = request.app.state.settings.api_key
        given = request.headers.get("authorization", "")
        keyed_ok = key is None or secrets.compare_digest(given.encode(), f"Bearer {key}".encode())
        signed_ok = expires >= time.time() and secrets.compare_digest(
            signature_.encode(), signature(key, video_id, expires).encode())
        if not (keyed_ok or signed_ok):
            raise ApiError(401, "Unauthorized", "missing or wrong API key, or an expired or wrong video link (ask "
                                                "/v1/videos/ID/link for one)", headers={"WWW-Authenticate": "Bearer"})
        try:
            video = await asyncio.to_thread(photos.get, video_id)
            if not video.is_video:
                raise ApiError(404, "NotFound", f"photo {video.name}: not a video")
            path, media_type = await asyncio.to_thread(photos.original, video_id)
        except ClipblipError as e:
            raise ApiError.of(e) from None
        return FileResponse(path, media_type=media_type,
                            headers={"Cache-Control": "private, max-age=3600", **SECURITY_HEADERS})

    return keyed, signed
