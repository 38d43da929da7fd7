"""The HTTP API (FastAPI): routes, validation, errors, API key, metrics. No model logic lives here.

Each operation's route (:mod:`.operations`, one registry) reads its body into a job, hands it to a backend — the
in-process batcher, or Ray Serve deployments — and writes the operation's answer. Routes are module-level and
find the backend, settings and search database in ``request.app.state``. Every failure is ``{"error": {"type",
"message", "index"}}`` with a status that says whose fault it is; never a traceback.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import ClipblipError
from .errors import ApiError, QueueFull, ShuttingDown
from .operations import OPERATIONS, Body, Job, JobResult, Operation, decode_image
from .page import page_routes, photo_routes, video_routes

__all__ = ["Backend", "Settings", "Metrics", "ApiError", "create_app"]

MiB = 1 << 20


class Backend(Protocol):
    """Who runs the jobs: the in-process batcher or Ray Serve."""

    def models(self) -> dict[str, dict[str, Any]]: ...  # name -> ModelService.describe()

    async def submit(self, model: str, job: Job) -> JobResult: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Settings:
    api_key: str | None = None
    max_request_bytes: int = 32 * MiB


class Metrics:
    """Prometheus metrics of one app (its own registry, so that several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("clipblip_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.seconds = Histogram("clipblip_request_seconds", "Request latency by route", ["route"],
                                 registry=self.registry)
        self.batch_size = Histogram("clipblip_batch_size", "Items per engine call, by model", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.queue_depth = Gauge("clipblip_queue_depth", "Items waiting or running, by model", ["model"],
                                 registry=self.registry)

    def batch(self, model: str, items: int) -> None:
        self.batch_size.labels(model).observe(items)

    def depth(self, model: str, depth: int) -> None:
        self.queue_depth.labels(model).set(depth)


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    image: str | None = Field(None, description="base64, plain or as a data:image/...;base64, URI")
    like: str | None = Field(None, description="a photo or video of the database, by its id: more like this")
    like_at: float | None = Field(None, ge=0, description="with like, a video: the segment shown at this time (s)")
    k: int = Field(10, ge=1)
    rerank: bool = False
    rerank_model: str | None = None


# --- what every route shares -----------------------------------------------------------------------------

async def check_key(request: Request) -> None:
    """401 unless the request carries the API key (when the server has one). Async: no thread per request."""
    key = request.app.state.settings.api_key
    if key is None:
        return
    given = request.headers.get("authorization", "")
    if not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
        raise ApiError(401, "Unauthorized", "missing or wrong API key (Authorization: Bearer KEY)",
                       headers={"WWW-Authenticate": "Bearer"})


def model_of(request: Request, name: str) -> dict[str, Any]:
    """What the backend says of the served model ``name``; 404 if none is served under it."""
    models = request.app.state.backend.models()
    if name not in models:
        raise ApiError(404, "ModelNotFound", f"model {name!r} is not served (serving: {', '.join(models) or 'none'})")
    return models[name]


async def results_of(request: Request, model: str, job: Job) -> list:
    """Each item's result; an ApiError for the job, or for its first failed item (with its index)."""
    try:
        result = await request.app.state.backend.submit(model, job)
    except (QueueFull, ShuttingDown) as e:
        raise ApiError.of(e) from None
    if result.error is not None:
        raise ApiError.of(result.error)
    if result.errors:
        index = min(result.errors)
        raise ApiError.of(result.errors[index], index)
    return result.results


def search_of(request: Request):
    search = request.app.state.search
    if search is None:
        raise ApiError(404, "NoDatabase", "no search database is served (start the server with --db DB)")
    return search


# --- routes ------------------------------------------------------------------------------------------------

def operation_route(operations: list[Operation]):
    """The endpoint of one route, answering with the operation (of those sharing the route) that takes the body.
    It returns a JSONResponse itself: FastAPI's encoder would walk every float of an embedding in Python."""

    async def endpoint(request: Request, body: Body) -> JSONResponse:
        model = model_of(request, body.model)
        op = next((op for op in operations if op.takes(body)), None)
        if op is None:  # operations sharing a route that leave a body to none of them: a bug of the registry
            raise ApiError(422, "InvalidRequest", f"{operations[0].route}: no operation takes this body")
        if not op.does(model):
            raise ApiError(422, "UnsupportedTask", op.refusal(body.model, model))
        results = await results_of(request, body.model, op.job(body, model))
        return JSONResponse({"model": body.model, "random_weights": model["random_weights"],
                             **op.answer(body, results, model)})

    endpoint.__annotations__ = {"request": Request, "body": operations[0].body, "return": JSONResponse}
    endpoint.__name__ = operations[0].route.rsplit("/", 1)[-1]
    return endpoint


def operation_routes() -> APIRouter:
    """One POST route per route of the registry, as it is when the app is made."""
    routes: dict[str, list[Operation]] = {}
    for op in OPERATIONS.values():
        routes.setdefault(op.route, []).append(op)
    router = APIRouter()
    for route, operations in routes.items():
        if len({op.body for op in operations}) != 1:
            raise ValueError(f"{route}: operations sharing a route must share its body")
        router.add_api_route(route, operation_route(operations), methods=["POST"], summary=operations[0].summary)
    return router


v1 = APIRouter(prefix="/v1")  # the routes of the API other than the operations'


@v1.get("/models")
async def list_models(request: Request):
    return {"object": "list", "data": list(request.app.state.backend.models().values())}


@v1.post("/search")
async def search_route(request: Request, body: SearchBody):
    search = search_of(request)
    if sum(q is not None for q in (body.text, body.image, body.like)) != 1:
        raise ApiError(422, "InvalidRequest", "give one of text, image or like (a photo id)")
    image = decode_image(body.image, "image") if body.image is not None else None
    try:
        hits = await asyncio.to_thread(search.query, body.text, image, body.k, body.rerank, body.rerank_model,
                                       body.like, body.like_at)
    except ClipblipError as e:
        raise ApiError.of(e) from None
    query = ({"text": body.text} if body.text is not None else {"like": body.like, **(
        {} if body.like_at is None else {"at": body.like_at})} if body.like is not None
             else {"image": f"{len(image):,} bytes"})
    return {"model": search.model, "random_weights": search.engine.manifest.random_weights, "query": query,
            "hits": hits}


@v1.get("/database")
async def database(request: Request):
    return await asyncio.to_thread(search_of(request).describe)


other = APIRouter()


@other.get("/health")
async def health(request: Request):
    if not request.app.state.ready:
        raise ApiError(503, "NotReady", "the models are still loading", headers={"Retry-After": "1"})
    return {"status": "ok"}


@other.get("/metrics", include_in_schema=False)
async def prometheus(request: Request):
    return PlainTextResponse(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# --- the app -----------------------------------------------------------------------------------------------

async def api_error(request: Request, error: ApiError):
    return error.response()


async def invalid(request: Request, error: RequestValidationError):
    problems = error.errors()
    if any(p.get("type") == "json_invalid" or tuple(p.get("loc", ())) == ("body",) for p in problems):
        return not_json(request)
    first = problems[0] if problems else {}
    fields = [part for part in first.get("loc", ())[1:] if not is_union_member(part)]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in fields).lstrip(".")
    index = next((part for part in fields[1:] if isinstance(part, int)), None)
    return ApiError(422, "InvalidRequest", f"{where}: {first.get('msg', 'invalid')}".strip(": "), index).response()


def is_union_member(part) -> bool:
    """pydantic names the member of a union it tried (``input.str``, ``input.list[str]``): not a field."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part or "-" in part)


def not_json(request: Request):
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and kind != "application/json" and not kind.endswith("+json"):
        return ApiError(400, "InvalidJSON", f"the body must be a JSON object sent with Content-Type: "
                                            f"application/json (it came as {kind[:80]})").response()
    return ApiError(400, "InvalidJSON", "the body is not a JSON object").response()


async def http_error(request: Request, error: StarletteHTTPException):
    if error.status_code == 400 and request.method == "POST":  # FastAPI could not read the body (JSON nested too deep)
        return ApiError(400, "InvalidJSON", "the body is not a JSON object (it cannot be parsed)").response()
    return ApiError(error.status_code, "NotFound" if error.status_code == 404 else "HTTPError",
                    f"{request.method} {request.url.path}: {error.detail}").response()


async def unexpected(request: Request, error: Exception):  # a bug: say so without a traceback
    return ApiError(500, "InternalError", f"internal error ({type(error).__name__}); see the server log").response()


def create_app(backend: Backend, settings: Settings | None = None, metrics: Metrics | None = None,
               search: Any = None) -> FastAPI:
    """The FastAPI app over ``backend``; ``backend.start``/``close`` run with the app's lifespan.
    ``search``: a :class:`~clipblip.serve.search.SearchService` answering ``POST /v1/search``."""
    settings = settings or Settings()
    metrics = metrics or Metrics()

    async def lifespan(app: FastAPI):
        await backend.start()
        app.state.ready = True
        yield
        app.state.ready = False
        await backend.close()  # after the server has answered every accepted request

    app = FastAPI(title="clipblip", version=__version__, lifespan=lifespan,
                  description="CLIP and BLIP with ONNX Runtime: embeddings, similarity, zero-shot classification, "
                              "captions, VQA and image–text matching, batched on the fly.")
    app.state.ready = False
    app.state.backend, app.state.settings, app.state.metrics, app.state.search = backend, settings, metrics, search
    app.add_middleware(MeteredAndBounded, metrics=metrics, max_request_bytes=settings.max_request_bytes)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
    keyed = [Depends(check_key)]
    app.include_router(v1, dependencies=keyed)
    app.include_router(operation_routes(), dependencies=keyed)
    if search is not None:
        app.include_router(photo_routes(search.photos), prefix="/v1", dependencies=keyed)
        link, stream = video_routes(search.photos)
        app.include_router(link, prefix="/v1", dependencies=keyed)
        app.include_router(stream, prefix="/v1")  # keyed, or a link signed with the key
    app.include_router(page_routes())
    app.include_router(other)
    return app


class MeteredAndBounded:
    """ASGI middleware: a 413 for bodies over the limit — before the app reads them when their size is
    declared, as soon as they pass it when they come in chunks — and per-route request counts and latencies."""

    def __init__(self, app, metrics: Metrics, max_request_bytes: int):
        self.app, self.metrics, self.limit = app, metrics, max_request_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]}
            await send(message)

        try:
            declared = int(dict(scope.get("headers", [])).get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > self.limit:
            too_large = ApiError(413, "RequestTooLarge", f"the body has {declared:,} bytes; the limit is "
                                                         f"{self.limit:,} (--max-request-bytes)")
            await too_large.response()(scope, receive, sending)
        else:
            await self.app(scope, self.bounded(receive), sending)
        route = scope.get("route")
        name = getattr(route, "path", None) or ("unmatched" if status[0] == 404 else scope.get("path", ""))
        self.metrics.requests.labels(name, str(status[0])).inc()
        self.metrics.seconds.labels(name).observe(time.perf_counter() - start)

    def bounded(self, receive):
        """``receive`` that stops a body without a Content-Length once it passes the limit. The ApiError it
        raises is an HTTPException, which FastAPI passes on as it reads the body (any other error would
        become its 400 "error parsing the body")."""
        seen = [0]

        async def receiving():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.limit:
                    raise ApiError(413, "RequestTooLarge", f"the body passes the limit of {self.limit:,} bytes "
                                                           f"(--max-request-bytes)")
            return message

        return receiving
