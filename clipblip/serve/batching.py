"""Dynamic batching in one process: concurrent jobs for a model are gathered into one engine call.

Per model, one dispatcher task takes the oldest waiting (op, options) group, lets it grow for at most
``wait_ms`` (or until ``max_batch`` items), and runs it on the model's own worker thread, off the
event loop. While that call runs, new jobs queue up, so a busy server batches by itself. The queue is
bounded in items: a job that would pass ``max_queue`` is refused at once (the HTTP layer answers 503).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from .service import Job, JobResult, ModelService

__all__ = ["Batcher", "QueueFull", "ShuttingDown"]

RETURN_WAIT_S = 0.1  # the longest a busy batch waits for the clients the last call answered


class QueueFull(Exception):
    """The model's queue holds ``max_queue`` items already."""


class ShuttingDown(Exception):
    """The server is stopping and takes no new work."""


@dataclass
class Waiting:
    job: Job
    future: asyncio.Future
    since: float = field(default_factory=time.monotonic)


class Batcher:
    """Gathers the jobs of one model; ``submit`` returns each job's own :class:`JobResult`."""

    def __init__(self, service: ModelService, max_batch: int, wait_ms: float, max_queue: int,
                 on_batch: Callable[[str, int], None] | None = None,
                 on_depth: Callable[[str, int], None] | None = None):
        self.service = service
        self.max_batch, self.wait_s, self.max_queue = max_batch, wait_ms / 1000.0, max_queue
        self.on_batch = on_batch or (lambda model, items: None)
        self.on_depth = on_depth or (lambda model, depth: None)
        self.groups: OrderedDict[tuple, list[Waiting]] = OrderedDict()  # (op, key) -> waiting, oldest first
        self.depth = 0  # items waiting or running
        self.answered, self.answered_at, self.call_s = 0, 0.0, 0.0  # the last engine call: items, end, seconds
        self.closing = False
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"clipblip-{service.name}")
        self.arrived: asyncio.Event | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.arrived = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.dispatch(), name=f"batcher-{self.service.name}")

    async def submit(self, job: Job) -> JobResult:
        if self.closing:
            raise ShuttingDown(f"model {self.service.name!r}: the server is shutting down")
        if self.depth and self.depth + len(job.items) > self.max_queue:
            raise QueueFull(f"model {self.service.name!r}: {self.depth} items queued (limit {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self.groups.setdefault((job.op, job.key), []).append(Waiting(job, future))
        self.depth += len(job.items)
        self.on_depth(self.service.name, self.depth)
        self.arrived.set()
        return await future

    async def dispatch(self) -> None:
        """Forever: the oldest group, grown for at most ``wait_ms``, as one engine call."""
        loop = asyncio.get_running_loop()
        while True:
            while not self.groups:
                self.arrived.clear()
                await self.arrived.wait()
            group = next(iter(self.groups))  # the group whose first job waits longest
            # Idle, the batch grows for wait_ms after its first job came, up to max_batch. Busy (that job came
            # during the last call or just after it), it waits for the items that waited through the last call
            # plus as many as that call answered, for a tenth of its time: those clients are on their way
            # back, and a call that leaves without them splits the clients in two groups that take turns for
            # good (16 clients on int8 CLIP base: calls of 4 and 12, or 8 and 8). One client alone is never
            # kept waiting; a batch waits at most RETURN_WAIT_S.
            first = self.groups[group][0].since
            busy = first - self.answered_at < self.wait_s
            if busy:
                waited = sum(len(w.job.items) for w in self.groups[group] if w.since < self.answered_at)
                expected = min(self.max_batch, waited + self.answered)
                deadline = self.answered_at + min(max(self.wait_s, self.call_s / 10), RETURN_WAIT_S)
            else:
                expected, deadline = self.max_batch, first + self.wait_s
            while self.items(group) < expected and (left := deadline - time.monotonic()) > 0:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = self.take(group)
            items = sum(len(w.job.items) for w in batch)
            self.on_batch(self.service.name, items)
            began = time.monotonic()
            try:
                results = await loop.run_in_executor(self.executor, self.service.run, [w.job for w in batch])
            except Exception as e:  # a bug, not a bad input: every job of the call learns of it
                results = [e] * len(batch)
            for waiting, result in zip(batch, results):
                if not waiting.future.done():
                    if isinstance(result, Exception):
                        waiting.future.set_exception(result)
                    else:
                        waiting.future.set_result(result)
            self.depth -= items
            self.answered, self.answered_at = items, time.monotonic()
            self.call_s = self.answered_at - began
            self.on_depth(self.service.name, self.depth)

    def items(self, group: tuple) -> int:
        return sum(len(w.job.items) for w in self.groups.get(group, []))

    def take(self, group: tuple) -> list[Waiting]:
        """The group's oldest jobs up to ``max_batch`` items (always at least one job)."""
        waiting = self.groups[group]
        taken, count = [], 0
        while waiting and (not taken or count + len(waiting[0].job.items) <= self.max_batch):
            count += len(waiting[0].job.items)
            taken.append(waiting.pop(0))
        if not waiting:
            del self.groups[group]
        return taken

    async def close(self) -> None:
        """Take no new jobs, finish every accepted one, then stop the worker."""
        self.closing = True
        while self.depth:
            await asyncio.sleep(0.01)
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=True)
