"""The HTTP API (FastAPI): routes, validation, errors, API key, metrics. No model logic lives here.

Routes turn a request into jobs (see :mod:`.service`) and hand them to a backend — the in-process
batcher, or Ray Serve deployments — then shape the answer. Every failure is ``{"error": {"type",
"message", "index"}}`` with a status that says whose fault it is; never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..engine.clip import label_probabilities, label_prompts
from ..engine.generate import OPTION_NAMES, option_rules, option_types
from ..errors import ClipblipError
from .batching import QueueFull, ShuttingDown
from .errors import ApiError
from .page import page_routes, photo_routes
from .service import Job, JobResult

__all__ = ["Backend", "Settings", "Metrics", "ApiError", "create_app"]

DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
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


# --- request bodies ----------------------------------------------------------------------------------

class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str


class EmbeddingsBody(Body):
    """OpenAI's embeddings request, with clipblip's ``modality`` (images as base64 or data URIs)."""

    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None  # accepted, as OpenAI does, and not used
    modality: Literal["text", "image"] = "text"

    def items(self) -> list[str]:
        items = [self.input] if isinstance(self.input, str) else self.input
        if not items:
            raise ApiError(422, "InvalidRequest", "input: give one item or more")
        return items


class ImagesBody(Body):
    images: list[str] = Field(min_length=1, description="base64, plain or as a data:image/...;base64, URI")


class SimilarityBody(ImagesBody):
    texts: list[str] = Field(min_length=1)


class ClassifyBody(ImagesBody):
    labels: list[str] = Field(min_length=1)
    template: str | None = None  # the model's own prompt (its manifest's prompt_template) when not given


class DecodingFields(BaseModel):
    def options(self) -> tuple:
        """The set options other than max_new_tokens, hashable (a batching key)."""
        return tuple(sorted((name, value) for name, value in self.model_dump(exclude={"max_new_tokens"}).items()
                            if value is not None and name in OPTION_NAMES))


def decoding_model() -> type[BaseModel]:
    """transformers' generate() options as request fields, one per field of GenerationOptions (its type and help);
    unset ones come from the checkpoint's generation config."""
    kinds = option_types()
    return create_model("Decoding", __base__=DecodingFields, **{
        name: (kinds[name] | None, Field(None, description=rule.help)) for name, rule in option_rules().items()})


Decoding = decoding_model()


class CaptionBody(ImagesBody, Decoding):
    prompt: str | None = None


class VqaBody(ImagesBody, Decoding):
    question: str


class MatchBody(ImagesBody):
    texts: list[str] = Field(min_length=1)


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    image: str | None = Field(None, description="base64, plain or as a data:image/...;base64, URI")
    like: str | None = Field(None, description="a photo of the database, by its id: more like this")
    k: int = Field(10, ge=1)
    rerank: bool = False
    rerank_model: str | None = None


def decode_images(images: list[str], field: str = "images") -> list[bytes]:
    """base64 (plain or data URI) → the encoded image files; 400 naming the first item that is not base64."""
    decoded = []
    for i, text in enumerate(images):
        try:
            decoded.append(base64.b64decode(DATA_URI.sub("", text.strip()), validate=True))
        except (binascii.Error, ValueError):
            raise ApiError(400, "InvalidBase64", f"{field}[{i}]: not base64 (plain or a data:image/...;base64, URI)",
                           i) from None
    return decoded


# --- the app -----------------------------------------------------------------------------------------

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
    app.add_middleware(MeteredAndBounded, metrics=metrics, max_request_bytes=settings.max_request_bytes)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        problems = error.errors()
        if any(p.get("type") == "json_invalid" or tuple(p.get("loc", ())) == ("body",) for p in problems):
            return ApiError(400, "InvalidJSON", "the body is not a JSON object").response()
        first = problems[0] if problems else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:])
        index = next((part for part in first.get("loc", ())[2:] if isinstance(part, int)), None)
        return ApiError(422, "InvalidRequest", f"{where}: {first.get('msg', 'invalid')}".strip(": "), index).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return ApiError(error.status_code, "NotFound" if error.status_code == 404 else "HTTPError",
                        f"{request.method} {request.url.path}: {error.detail}").response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):  # a bug: say so without a traceback
        return ApiError(500, "InternalError", f"internal error ({type(error).__name__}); see the server log").response()

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise ApiError(401, "Unauthorized", "missing or wrong API key (Authorization: Bearer KEY)",
                           headers={"WWW-Authenticate": "Bearer"})

    def model_of(name: str, op: str | None = None) -> dict[str, Any]:
        models = backend.models()
        if name not in models:
            raise ApiError(404, "ModelNotFound", f"model {name!r} is not served (serving: {', '.join(models)})")
        info = models[name]
        if op is not None and op not in info["ops"]:
            raise ApiError(422, "UnsupportedTask", f"model {name!r} ({info['family']}, {', '.join(info['tasks'])}) "
                                                   f"does not do {op} (it does: {', '.join(info['ops'])})")
        return info

    async def answer(model: str, job: Job) -> JobResult:
        """The job's result; an ApiError for the job, or for its first failed item (with its index)."""
        try:
            result = await backend.submit(model, job)
        except (QueueFull, ShuttingDown) as e:
            raise ApiError.of(e) from None
        if result.error is not None:
            raise ApiError.of(result.error)
        if result.errors:
            index = min(result.errors)
            raise ApiError.of(result.errors[index], index)
        return result

    async def run(model: str, job: Job) -> list:
        return (await answer(model, job)).results

    async def embeddings(model: str, images: list[bytes] | None = None, texts: list[str] | None = None):
        """(image rows, text rows), the two jobs run concurrently."""
        jobs = []
        if images is not None:
            jobs.append(run(model, Job("embed_image", images)))
        if texts is not None:
            jobs.append(run(model, Job("embed_text", texts)))
        rows = await asyncio.gather(*jobs)
        return [np.stack(r) for r in rows]

    def embedding(row: np.ndarray, encoding_format: str):
        """A row as OpenAI returns it: a list of floats, or base64 of little-endian float32."""
        if encoding_format == "base64":
            return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode()
        return row.tolist()

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    @v1.get("/models")
    async def list_models():
        return {"object": "list", "data": list(backend.models().values())}

    @v1.post("/embeddings")
    async def embed(body: EmbeddingsBody):
        info = model_of(body.model, "embed_" + body.modality)
        items = body.items()
        if body.dimensions is not None and body.dimensions != info["dim"]:
            raise ApiError(400, "InvalidRequest", f"dimensions {body.dimensions}: model {body.model!r} gives "
                                                  f"{info['dim']}-dimensional embeddings and does not shorten them")
        if body.modality == "image":
            job = Job("embed_image", decode_images(items, "input"))
        else:
            job = Job("embed_text", items)
        result = await answer(body.model, job)
        tokens = result.tokens
        return {"object": "list", "model": body.model,
                "data": [{"object": "embedding", "index": i, "embedding": embedding(row, body.encoding_format)}
                         for i, row in enumerate(result.results)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @v1.post("/similarity")
    async def similarity(body: SimilarityBody):
        model_of(body.model, "embed_image")
        image_rows, text_rows = await embeddings(body.model, decode_images(body.images), body.texts)
        return {"model": body.model, "similarity": (image_rows @ text_rows.T).tolist()}

    @v1.post("/classify")
    async def classify(body: ClassifyBody):
        info = model_of(body.model, "embed_image")
        if info.get("scoring") is None:
            raise ApiError(422, "UnsupportedTask", f"model {body.model!r}: zero-shot classification needs a CLIP-like "
                                                   f"model (CLIP, Chinese-CLIP, SigLIP)")
        template = info["prompt_template"] if body.template is None else body.template
        try:
            prompts = label_prompts(template, body.labels)
        except ClipblipError as e:
            raise ApiError(422, "InvalidRequest", str(e)) from None
        image_rows, text_rows = await embeddings(body.model, decode_images(body.images), prompts)
        probs = label_probabilities(image_rows @ text_rows.T, info["scoring"], info["logit_scale"], info["logit_bias"])
        return {"model": body.model, "template": template, "scoring": info["scoring"], "results": [
            [{"label": label, "probability": float(p)} for label, p in sorted(zip(body.labels, row), key=lambda lp: -lp[1])]
            for row in probs]}

    def generations(results) -> list[dict[str, Any]]:
        return [{"text": g.text, "token_ids": g.token_ids, "prompt_ids": g.prompt_ids,
                 **({} if g.score is None else {"score": g.score})} for g in results]

    @v1.post("/caption")
    async def caption(body: CaptionBody):
        model_of(body.model, "caption")
        job = Job("caption", decode_images(body.images), (body.prompt, body.max_new_tokens, body.options()))
        return {"model": body.model, "results": generations(await run(body.model, job))}

    @v1.post("/vqa")
    async def vqa(body: VqaBody):
        model_of(body.model, "vqa")
        images = decode_images(body.images)
        job = Job("vqa", images, (body.max_new_tokens, body.options()), [body.question] * len(images))
        return {"model": body.model, "results": generations(await run(body.model, job))}

    @v1.post("/match")
    async def match(body: MatchBody):
        model_of(body.model, "match")
        results = await run(body.model, Job("match", decode_images(body.images), tuple(body.texts)))
        return {"model": body.model, "itm": [itm.tolist() for itm, _ in results],
                "itc": [itc.tolist() for _, itc in results]}

    @v1.post("/search")
    async def search_route(body: SearchBody):
        if search is None:
            raise ApiError(404, "NoDatabase", "no search database is served (start the server with --db DB)")
        if sum(q is not None for q in (body.text, body.image, body.like)) != 1:
            raise ApiError(422, "InvalidRequest", "give one of text, image or like (a photo id)")
        image = decode_images([body.image])[0] if body.image is not None else None
        try:
            hits = await asyncio.to_thread(search.query, body.text, image, body.k, body.rerank, body.rerank_model,
                                           body.like)
        except ClipblipError as e:
            raise ApiError.of(e) from None
        query = ({"text": body.text} if body.text is not None else {"like": body.like} if body.like is not None
                 else {"image": f"{len(image):,} bytes"})
        return {"query": query, "hits": hits}

    @v1.get("/database")
    async def database():
        if search is None:
            raise ApiError(404, "NoDatabase", "no search database is served (start the server with --db DB)")
        return await asyncio.to_thread(search.describe)

    if search is not None:
        v1.include_router(photo_routes(search.photos))

    app.include_router(v1)
    app.include_router(page_routes())

    @app.get("/health")
    async def health():
        if not app.state.ready:
            raise ApiError(503, "NotReady", "the models are still loading", headers={"Retry-After": "1"})
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class MeteredAndBounded:
    """ASGI middleware: a 413 for bodies over the limit (before the app reads them), and per-route
    request counts and latencies."""

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
            await self.app(scope, self.bounded(receive, scope, sending), sending)
        route = scope.get("route")
        name = getattr(route, "path", None) or ("unmatched" if status[0] == 404 else scope.get("path", ""))
        self.metrics.requests.labels(name, str(status[0])).inc()
        self.metrics.seconds.labels(name).observe(time.perf_counter() - start)

    def bounded(self, receive, scope, send):
        """``receive`` that stops a body without a Content-Length once it passes the limit."""
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
