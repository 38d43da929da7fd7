"""The single-process backend: one engine and one batcher per model folder, in this process."""

from __future__ import annotations

from typing import Any

from .app import Metrics
from ..engine.machine import usable_cores
from .batching import Batcher
from .service import Job, JobResult, ModelService

__all__ = ["LocalBackend"]


class LocalBackend:
    """Runs jobs on in-process engines, batched per model by a :class:`Batcher`."""

    def __init__(self, services: dict[str, ModelService], *, max_batch: int, batch_wait_ms: float, max_queue: int,
                 metrics: Metrics, threads: int | None = None):
        """``threads``: each engine's ONNX Runtime threads (None: every core); below the cores, images are
        prepared while a model runs, on the cores it leaves free."""
        self.services = services
        overlap = threads is not None and threads < usable_cores()
        self.batchers = {name: Batcher(service, max_batch, batch_wait_ms, max_queue, on_batch=metrics.batch,
                                       on_depth=metrics.depth, overlap=overlap) for name, service in services.items()}

    def models(self) -> dict[str, dict[str, Any]]:
        return {name: service.description for name, service in self.services.items()}

    async def submit(self, model: str, job: Job) -> JobResult:
        return await self.batchers[model].submit(job)

    async def start(self) -> None:
        for batcher in self.batchers.values():
            batcher.start()

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
