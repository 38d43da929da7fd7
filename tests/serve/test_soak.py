"""Soak: 2,000 requests at concurrency 16 against the real app (uvicorn in a thread, real HTTP on
loopback): zero errors and resident memory that levels off; a control with a leak must be caught."""

import base64
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx", reason="httpx (the `test` extra) drives the server")
uvicorn = pytest.importorskip("uvicorn", reason="the `serve` extra is not installed")

from clipblip.serve import LocalBackend, Metrics, Settings, create_app, load_services  # noqa: E402
from clipblip.serve.service import ModelService  # noqa: E402
from tests.serve.test_server import free_port  # noqa: E402

pytestmark = pytest.mark.slow

REQUESTS = int(os.environ.get("CLIPBLIP_SERVE_SOAK_REQUESTS", "2000"))
CONCURRENCY = 16
GROWTH_LIMIT_MB = 40


def resident_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def png(seed: int) -> str:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def soak(folder, requests: int) -> tuple[int, float]:
    """(failed requests, MB of resident growth after the first quarter) for a server in this process."""
    metrics = Metrics()
    backend = LocalBackend(load_services({"clip": folder}, threads=1), max_batch=16, batch_wait_ms=2,
                           max_queue=4096, metrics=metrics)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(backend, Settings(), metrics), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    images, texts = [png(i) for i in range(8)], ["a cat", "猫 🐱", "", "a photo of a dog " * 5]
    baseline = [None]

    def one(i: int) -> int:
        if i == requests // 4:
            baseline[0] = resident_mb()
        body = ({"model": "clip", "input": [images[i % 8]], "modality": "image"} if i % 3 else
                {"model": "clip", "input": texts[: 1 + i % 4]})
        return client.post(f"http://127.0.0.1:{port}/v1/embeddings", json=body, timeout=60).status_code

    try:
        with httpx.Client() as client, ThreadPoolExecutor(CONCURRENCY) as pool:
            statuses = list(pool.map(one, range(requests), timeout=600))
        return sum(s != 200 for s in statuses), resident_mb() - baseline[0]
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def test_memory_levels_off_and_nothing_fails(clip_with_attentions):
    failed, growth = soak(clip_with_attentions.exported, REQUESTS)
    assert failed == 0 and growth < GROWTH_LIMIT_MB, (failed, growth)


def test_the_soak_check_catches_a_leak(clip_with_attentions, monkeypatch):
    kept = []
    real = ModelService.run

    def leaky(self, jobs):
        kept.extend(np.ones(40_000) for _ in jobs)  # ~0.3 MB per request, never freed
        return real(self, jobs)

    monkeypatch.setattr(ModelService, "run", leaky)
    failed, growth = soak(clip_with_attentions.exported, 600)
    assert failed == 0 and growth > GROWTH_LIMIT_MB, growth
