"""The single-process backend: one engine and one batcher per model folder, in this process."""

from __future__ import annotations

from typing import Any

from .app import Metrics
from .batching import Batcher
from .service import Job, JobResult, ModelService

__all__ = ["LocalBackend"]


class LocalBackend:
    """Runs jobs on in-process engines, batched per model by a :class:`Batcher`."""

    def __init__(self, services: dict[str, ModelService], *, max_batch: int, batch_wait_ms: float, max_queue: int,
                 metrics: Metrics):
        self.services = services
        self.batchers = {name: Batcher(service, max_batch, batch_wait_ms, max_queue, on_batch=metrics.batch,
                                       on_depth=metrics.depth) for name, service in services.items()}

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
