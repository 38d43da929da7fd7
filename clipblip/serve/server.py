"""Load model folders and run the HTTP server in this process (uvicorn), as `clipblip serve` does."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from pathlib import Path

from ..defaults import MAX_BATCH, MAX_IMAGE_PIXELS
from ..errors import UsageError
from .service import ModelService

__all__ = ["parse_folders", "load_services", "is_loopback", "listening_socket", "serve_folders", "API_KEY_ENV"]

API_KEY_ENV = "CLIPBLIP_API_KEY"
NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"


def parse_folders(specs: list[str]) -> dict[str, Path]:
    """``DIR`` or ``NAME=DIR`` → {name: folder}; a model is served under its folder's name unless named."""
    import re

    folders: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or Path(spec).exists():
            name, folder = Path(spec).resolve().name, spec
        if not re.fullmatch(NAME, name):
            raise UsageError(f"{spec}: {name!r} cannot name a model (letters, digits, '.', '_', '-'); use NAME=DIR")
        if name in folders:
            raise UsageError(f"{spec}: two models named {name!r}; name one of them with NAME=DIR")
        folders[name] = Path(folder)
    return folders


def load_services(folders: dict[str, Path], provider: str = "auto", threads: int | None = None,
                  max_batch: int = MAX_BATCH, max_image_pixels: int | None = MAX_IMAGE_PIXELS
                  ) -> dict[str, ModelService]:
    """An engine per folder (its family from the manifest), wrapped as a service."""
    from ..engine.opening import open_engine

    services = {}
    for name, folder in folders.items():
        engine = open_engine(folder, provider=provider, threads=threads, max_batch=max_batch,
                             max_image_pixels=max_image_pixels)
        services[name] = ModelService(name, engine)
    return services


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` as uvicorn binds one (SO_REUSEADDR; not listening yet); a UsageError in
    one line naming the address when it cannot be bound: taken, not an address of this machine, or not allowed."""
    shown = f"[{host}]" if ":" in host else host
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: must be between 0 and 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except socket.gaierror:
        sock.close()
        raise UsageError(f"--host {host}: not a name or address this machine can resolve") from None
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is in use; choose another with --port") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"--host {host}: not an address of this machine, so nothing can listen on it; choose "
                             f"one it has (127.0.0.1 for this machine only, 0.0.0.0 for every network)") from None
        if e.errno == errno.EACCES:
            raise UsageError(f"port {port} on {shown}: permission denied (ports below 1024 need privileges); "
                             f"choose another with --port") from None
        raise UsageError(f"cannot listen on {shown}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def api_key(given: str | None) -> str | None:
    """The key from --api-key, else from the environment; None: no key asked."""
    key = given if given is not None else os.environ.get(API_KEY_ENV)
    return key or None


def serve_folders(folders: dict[str, Path], *, host: str = "127.0.0.1", port: int = 8000, provider: str = "auto",
                  threads: int | None = None, max_batch: int = MAX_BATCH, batch_wait_ms: float = 5.0,
                  max_queue: int = 1024, max_request_bytes: int = 32 << 20, key: str | None = None,
                  max_image_pixels: int | None = MAX_IMAGE_PIXELS, db: str | Path | None = None, say=print) -> None:
    """Load the folders (and the search database ``db``) and serve them until SIGTERM or Ctrl-C (then every
    accepted request is answered)."""
    import uvicorn

    from .app import Metrics, Settings, create_app
    from .local import LocalBackend

    for name, value in (("--max-batch", max_batch), ("--max-queue", max_queue),
                        ("--max-request-bytes", max_request_bytes)):
        if value < 1:
            raise UsageError(f"{name} {value}: must be at least 1")
    if batch_wait_ms < 0:
        raise UsageError(f"--batch-wait-ms {batch_wait_ms}: must be 0 or more")
    sock = listening_socket(host, port)  # before minutes of loading: a taken port is said at once
    with sock:
        port = sock.getsockname()[1]  # the one the system chose for --port 0
        if len(folders) + (db is not None) > 1:  # sessions of several models run at once: idle threads must sleep
            from ..engine.session import set_threading

            set_threading("no-spin")
        services = load_services(folders, provider, threads, max_batch, max_image_pixels)
        metrics = Metrics()
        backend = LocalBackend(services, max_batch=max_batch, batch_wait_ms=batch_wait_ms, max_queue=max_queue,
                               metrics=metrics, threads=threads)
        search = None
        if db is not None:
            from .search import SearchService

            search = SearchService(db, services, provider=provider, threads=threads, max_batch=max_batch,
                                   max_image_pixels=max_image_pixels)
            say(f"search database {db}: {search.family} embeddings (POST /v1/search)")
        app = create_app(backend, Settings(api_key=key, max_request_bytes=max_request_bytes), metrics, search)
        announce([service.describe() for service in services.values()], host, port, key, say)
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=60,
                                      lifespan="on")).run(sockets=[sock])


def announce(models: list[dict], host: str, port: int, key: str | None, say, how: str = "") -> None:
    """What is served where (``models``: ModelService.describe() of each), and a warning for an open port."""
    for info in models:
        random = "  (RANDOM weights: outputs show plumbing, not meaning)" if info["random_weights"] else ""
        say(f"model {info['id']}: {info['family']} {', '.join(info['tasks'])} → {', '.join(info['ops'])}{random}")
    if key is None and not is_loopback(host):
        print(f"clipblip: warning: serving on {host} without an API key: anyone who reaches this port can use it "
              f"(set --api-key or {API_KEY_ENV})", file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    say(f"serving on http://{shown}:{port}{how} (API docs at /docs; Ctrl-C or SIGTERM to stop)")

