"""The same HTTP API on Ray Serve: one deployment per model folder, batched by ``@serve.batch``.

Ray does the serving work here; this module only wires it up:

* one :class:`ModelDeployment` per folder, named after the model, ``replicas`` copies placed (and
  restarted when they die) by Ray. Each replica loads the engine of its one folder; concurrent jobs
  are gathered by ``@serve.batch`` and run per (op, options) group as one :meth:`ModelService.run`
  call, in a thread so that the replica's event loop keeps accepting jobs;
* one ingress deployment (``_ingress``) serving :func:`create_app` over a :class:`RayBackend`, whose
  ``submit`` is a deployment-handle call; Ray's proxies route HTTP to it;
* :func:`build_app` (a Ray Serve application builder, for ``serve deploy`` and KubeRay),
  :func:`serve_on_ray` (``clipblip serve --ray``) and :func:`emit_config` (``--emit-config``).

Model folders are read by the replicas, wherever Ray places them: every node must see them at the
same absolute path (a shared volume, or the same image). Ray is imported by this module only.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import ray
from ray import serve

from ..defaults import MAX_BATCH, MAX_IMAGE_PIXELS
from ..errors import UsageError
from ..raycluster import cluster_address, connect
from .batching import QueueFull, ShuttingDown
from .server import API_KEY_ENV, announce
from .service import Job, JobResult

__all__ = ["ModelDeployment", "RayBackend", "build_app", "emit_config", "serve_on_ray", "APP_NAME", "INGRESS"]

APP_NAME = "clipblip"  # the Serve application
INGRESS = "_ingress"  # the HTTP deployment; model names start with a letter or digit, so none is named so
IMPORT_PATH = "clipblip.serve.ray_app:build_app"
SUBMIT_TRIES = 2  # a job whose replica died is sent once more (jobs are pure); only once: a job that kills
# its replica must not take every replica down


class ReplicaUnavailable(ShuttingDown):
    """The replica running a job died, and so did the one it was sent to next (the HTTP layer answers 503)."""


# --- the model deployment ------------------------------------------------------------------------------

@serve.deployment
class ModelDeployment:
    """One model folder: its engine, and ``@serve.batch`` gathering concurrent jobs into engine calls."""

    def __init__(self, name: str, folder: str, provider: str = "auto", threads: int | None = None,
                 max_batch: int = MAX_BATCH, batch_wait_ms: float = 5.0,
                 max_image_pixels: int | None = MAX_IMAGE_PIXELS):
        from .server import load_services

        self.name = name
        self.service = load_services({name: Path(folder)}, provider, threads, max_batch, max_image_pixels)[name]
        # the decorator's values are fixed when the class is defined; these are the folder's own
        self.run_batch.set_max_batch_size(max_batch)
        self.run_batch.set_batch_wait_timeout_s(batch_wait_ms / 1000.0)

    def describe(self) -> dict[str, Any]:
        return self.service.describe()

    async def submit(self, job: Job) -> tuple[JobResult, int]:
        """The job's result, and the item count of the engine call it ran in if it was that call's
        first job (else 0): the ingress records each engine call's size once."""
        return await self.run_batch(job)

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.005)
    async def run_batch(self, jobs: list[Job]) -> list[tuple[JobResult, int]]:
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.op, job.key), []).append(i)
        out: list[Any] = [None] * len(jobs)
        for indices in groups.values():
            group = [jobs[i] for i in indices]
            results = await asyncio.to_thread(self.service.run, group)
            items = sum(len(job.items) for job in group)
            for n, (i, result) in enumerate(zip(indices, results)):
                out[i] = (result, items if n == 0 else 0)
        return out


# --- the ingress ---------------------------------------------------------------------------------------

class RayBackend:
    """The :class:`~clipblip.serve.app.Backend` of the ingress: jobs go to the model deployments'
    handles (Ray picks the replica); each engine call's size is recorded in this app's metrics."""

    def __init__(self, handles: dict[str, Any], metrics: Any):
        self.handles = handles
        self.metrics = metrics
        self.described: dict[str, dict[str, Any]] = {}
        self.depth = dict.fromkeys(handles, 0)  # items sent by this ingress and not answered yet

    def models(self) -> dict[str, dict[str, Any]]:
        return self.described

    async def start(self) -> None:
        names = list(self.handles)
        described = await asyncio.gather(*(self.handles[name].describe.remote() for name in names))
        self.described = dict(zip(names, described))

    async def close(self) -> None:
        pass

    async def submit(self, model: str, job: Job) -> JobResult:
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError

        self.depth[model] += len(job.items)
        self.metrics.depth(model, self.depth[model])
        try:
            for attempt in range(1, SUBMIT_TRIES + 1):
                try:
                    result, batch = await self.handles[model].submit.remote(job)
                    break
                except BackPressureError:
                    raise QueueFull(f"model {model!r}: every replica's queue is full (--max-queue)") from None
                except RayActorError:  # the replica died; Ray replaces it, another one may take the job
                    if attempt == SUBMIT_TRIES:
                        raise ReplicaUnavailable(f"model {model!r}: the replica died while running the job; "
                                                 f"retry") from None
        finally:
            self.depth[model] -= len(job.items)
            self.metrics.depth(model, self.depth[model])
        if batch:
            self.metrics.batch(model, batch)
        return result


class Ingress:
    """The HTTP deployment: its ASGI app is built on the replica (see :func:`ingress_app`)."""

    def __init__(self, models: dict[str, Any]):
        self.models = models  # the model deployments' handles, bound so that the application deploys them


def ingress_app(names: list[str], api_key: str | None, api_key_env: str | None, require_api_key: bool,
                max_request_bytes: int) -> Callable[[], Any]:
    """A builder of the ingress's FastAPI app, run on the ingress replica when it starts."""

    def build():
        from .app import Metrics, Settings, create_app

        key = api_key if api_key is not None else ((os.environ.get(api_key_env) or None) if api_key_env else None)
        if key is None and require_api_key:
            raise UsageError(f"this config asks for an API key: set {api_key_env} in the environment of the "
                             f"Ray nodes (for example through the application's runtime_env)")
        handles = {name: serve.get_deployment_handle(name) for name in names}
        metrics = Metrics()
        return create_app(RayBackend(handles, metrics), Settings(api_key=key, max_request_bytes=max_request_bytes),
                          metrics)

    return build


# --- the application ---------------------------------------------------------------------------------

DEFAULTS: dict[str, Any] = dict(provider="auto", threads=None, max_batch=MAX_BATCH, batch_wait_ms=5.0,
                                max_queue=1024, max_request_bytes=32 << 20, max_image_pixels=MAX_IMAGE_PIXELS,
                                replicas=1, api_key=None, api_key_env=API_KEY_ENV, require_api_key=False)


def options_of(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` over the defaults, checked; UsageError naming the first bad one."""
    unknown = set(args) - set(DEFAULTS) - {"models"}
    if unknown:
        raise UsageError(f"unknown application args: {', '.join(sorted(unknown))} "
                         f"(known: models, {', '.join(DEFAULTS)})")
    options = {**DEFAULTS, **{k: v for k, v in args.items() if k != "models"}}
    if options["replicas"] is None:
        options["replicas"] = 1
    for name in ("max_batch", "max_queue", "max_request_bytes", "replicas"):
        if not isinstance(options[name], int) or options[name] < 1:
            raise UsageError(f"--{name.replace('_', '-')} {options[name]}: must be at least 1")
    if options["batch_wait_ms"] < 0:
        raise UsageError(f"--batch-wait-ms {options['batch_wait_ms']}: must be 0 or more")
    return options


def models_of(args: dict[str, Any]) -> dict[str, str]:
    models = args.get("models")
    if not isinstance(models, dict) or not models:
        raise UsageError("application args: 'models' must map model names to folders")
    if INGRESS in models:
        raise UsageError(f"{INGRESS!r} cannot name a model")
    return {str(name): str(folder) for name, folder in models.items()}


def model_options(options: dict[str, Any]) -> dict[str, Any]:
    """Deployment options of a model: replicas, room for one running and one gathering batch, a
    bounded queue, and a CPU per engine thread (one if not set)."""
    return dict(num_replicas=options["replicas"], max_ongoing_requests=2 * options["max_batch"],
                max_queued_requests=options["max_queue"],
                ray_actor_options={"num_cpus": options["threads"] or 1})


INGRESS_OPTIONS = dict(num_replicas=1, ray_actor_options={"num_cpus": 0})  # it only moves requests along


def build_app(args: dict[str, Any]):
    """The Ray Serve application (the builder named in the config :func:`emit_config` writes).

    ``args``: ``models`` ({name: folder}, folders at a path every node sees) and the options of
    ``clipblip serve`` (``provider``, ``threads``, ``max_batch``, ``batch_wait_ms``, ``max_queue``,
    ``max_request_bytes``, ``max_image_pixels``, ``replicas``), ``api_key`` or ``api_key_env`` (the
    variable the ingress reads it from; default CLIPBLIP_API_KEY) and ``require_api_key``.
    """
    models, options = models_of(args), options_of(args)
    handles = {
        name: ModelDeployment.options(name=name, **model_options(options)).bind(
            name, folder, options["provider"], options["threads"], options["max_batch"], options["batch_wait_ms"],
            options["max_image_pixels"])
        for name, folder in models.items()}
    builder = ingress_app(list(models), options["api_key"], options["api_key_env"], options["require_api_key"],
                          options["max_request_bytes"])
    ingress = serve.deployment(serve.ingress(builder)(Ingress))
    return ingress.options(name=INGRESS, max_ongoing_requests=options["max_queue"], **INGRESS_OPTIONS).bind(handles)


# --- clipblip serve --ray ----------------------------------------------------------------------------

def app_args(folders: dict[str, Path], replicas: int | None, provider: str, threads: int | None, max_batch: int,
             batch_wait_ms: float, max_queue: int, max_request_bytes: int, max_image_pixels: int | None,
             check: bool) -> dict[str, Any]:
    """The builder's args: absolute folders (every node reads them at that path) and the options."""
    models = {}
    for name, folder in folders.items():
        folder = Path(folder).expanduser().absolute()
        if folder.exists() or check:
            from ..manifest import Manifest

            Manifest.load(folder)  # a folder that is not a model folder fails here, not in every replica
        else:
            print(f"clipblip: warning: {folder} is not here; it must exist at that path on every Ray node",
                  file=sys.stderr)
        models[name] = str(folder)
    args = dict(models=models, provider=provider, threads=threads, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                max_queue=max_queue, max_request_bytes=max_request_bytes, max_image_pixels=max_image_pixels,
                replicas=1 if replicas is None else replicas)
    options_of(args)
    return args


def serve_on_ray(folders: dict[str, Path], *, address: str | None = None, say: Callable[[str], None] = print,
                 host: str = "127.0.0.1", port: int = 8000, provider: str = "auto", threads: int | None = None,
                 max_batch: int = MAX_BATCH, batch_wait_ms: float = 5.0, max_queue: int = 1024,
                 max_request_bytes: int = 32 << 20, key: str | None = None, replicas: int | None = None,
                 max_image_pixels: int | None = MAX_IMAGE_PIXELS) -> None:
    """Deploy the folders on Ray Serve and serve until SIGTERM or Ctrl-C, then take the application
    down (and the local cluster, if this call started it).

    ``address`` (else RAY_ADDRESS): the cluster to join, as ``ray start`` prints it, authenticated as it
    asks (:func:`clipblip.raycluster.connect`); without one a small local cluster is started for this process.
    """
    args = app_args(folders, replicas, provider, threads, max_batch, batch_wait_ms, max_queue, max_request_bytes,
                    max_image_pixels, check=True)
    args.update(api_key=key, api_key_env=None)  # the key, if any, is the one given here
    app = build_app(args)
    address = cluster_address(address)
    cpus = max(2, math.ceil(len(folders) * args["replicas"] * (threads or 1)))
    say(f"joining the Ray cluster at {address}" if address else f"starting a local Ray cluster ({cpus} CPUs)")
    connect(address, cpus=cpus, logging_level="WARNING")
    stop = threading.Event()  # set by SIGTERM or Ctrl-C (after ray.init, which sets its own SIGTERM handler)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        say(f"Ray cluster: {ray.get_runtime_context().gcs_address}")
        try:
            serve.start(http_options={"host": host, "port": port})
            say(f"deploying {len(folders)} model(s), {args['replicas']} replica(s) each")
            serve.run(app, name=APP_NAME, route_prefix="/")
            models = [serve.get_deployment_handle(name, app_name=APP_NAME).describe.remote().result()
                      for name in folders]
            announce(models, host, port, key, say, " with Ray Serve")
            while not stop.wait(1.0):
                pass
            say("stopping")
        finally:
            if address:
                serve.delete(APP_NAME)  # the cluster and its Serve instance stay for others
            else:
                serve.shutdown()
    finally:
        ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    say("server stopped")


# --- serve deploy / KubeRay ----------------------------------------------------------------------------

def emit_config(folders: dict[str, Path], path: str | os.PathLike, *, force: bool = False, host: str = "127.0.0.1",
                port: int = 8000, provider: str = "auto", threads: int | None = None, max_batch: int = MAX_BATCH,
                batch_wait_ms: float = 5.0, max_queue: int = 1024, max_request_bytes: int = 32 << 20,
                key: str | None = None, replicas: int | None = None,
                max_image_pixels: int | None = MAX_IMAGE_PIXELS) -> Path:
    """Write a Ray Serve config (``serve deploy FILE``, or a KubeRay RayService's ``serveConfigV2``)
    for the same deployments. The API key itself is never written: with one, the config requires
    ``CLIPBLIP_API_KEY`` in the environment of the Ray nodes."""
    import yaml

    from .. import __version__
    from ..files import atomic_output

    args = app_args(folders, replicas, provider, threads, max_batch, batch_wait_ms, max_queue, max_request_bytes,
                    max_image_pixels, check=False)
    args.update(api_key_env=API_KEY_ENV, require_api_key=key is not None)
    options = options_of(args)
    deployments = [{"name": name, **model_options(options)} for name in args["models"]]
    deployments.append({"name": INGRESS, "max_ongoing_requests": options["max_queue"], **INGRESS_OPTIONS})
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH, "args": args,
                          "deployments": deployments}],
    }
    header = (f"# written by clipblip {__version__}: a Ray Serve config; run it with `serve deploy {Path(path).name}`"
              f" or paste it\n# into a KubeRay RayService's serveConfigV2. Model folders must exist at these paths on "
              f"every Ray node.\n# Deployment options below (num_replicas, or an autoscaling_config instead) may be "
              f"edited.\n# A cluster with token authentication (Ray's default where a token exists) takes it only from "
              f"`RAY_AUTH_MODE=token serve deploy ...`,\n# with the cluster's token in RAY_AUTH_TOKEN or "
              f"~/.ray/auth_token.\n")
    if key is not None:
        header += f"# The API key is not written here: set {API_KEY_ENV} in the environment of every Ray node.\n"
    with atomic_output(path, force) as tmp:
        tmp.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return Path(path)
