"""Dynamic batching in one process: concurrent jobs for a model are gathered into one engine call.

Per model, two stages on threads of their own, so that they overlap, with a bounded queue between them:

* preparing: as soon as a job comes, its images are decoded and resized (:meth:`ModelService.prepare`) on the
  model's preparing thread, while the model runs the jobs prepared before. At most ``PREPARED_BATCHES`` full
  batches of images wait prepared (a prepared image takes far more memory than an encoded one); later jobs wait
  encoded until the model takes a batch.
* the model: one dispatcher task takes the oldest (op, options) group with a prepared job, lets it grow for at
  most ``wait_ms`` (or until ``max_batch`` items are ready), and runs it on the model's worker, off the event loop.

Jobs without images (texts) skip the first stage. The queue is bounded in items: a job that would pass
``max_queue`` is refused at once (the HTTP layer answers 503).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from .errors import QueueFull, ShuttingDown
from .service import Job, JobResult, ModelService

__all__ = ["Batcher", "QueueFull", "ShuttingDown"]

RETURN_WAIT_S = 0.1  # the longest a busy batch waits for the clients the last call answered
PREPARED_BATCHES = 2  # images prepared ahead of the model: at most this many full batches


def os_name(name: str) -> None:
    """The calling thread's name for the system too (``top -H``, /proc/PID/task/*/comm; 15 bytes), on Linux:
    where a server's CPU goes can be read per stage (benchmarks/serve_load.py does)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):  # not Linux
        pass


@dataclass(eq=False)
class Waiting:
    job: Job
    future: asyncio.Future
    staged: bool = False  # its images go through the preparing stage
    ready: bool = True  # False until they are prepared
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
        self.unprepared: deque[Waiting] = deque()  # staged jobs waiting for the preparing thread, oldest first
        self.prepared_items, self.max_prepared = 0, PREPARED_BATCHES * max_batch  # being prepared or ready
        self.depth = 0  # items waiting, being prepared or running
        self.answered, self.answered_at, self.call_s = 0, 0.0, 0.0  # the last engine call: items, end, seconds
        self.closing = False
        # one thread each: the model's own ONNX Runtime threads keep the cores, and images are decoded between
        # (a job of several images is decoded on every core, see ImagePreprocessor.each)
        self.worker = ThreadPoolExecutor(1, thread_name_prefix=f"clipblip-{service.name}", initializer=os_name,
                                         initargs=(f"cb-model {service.name}",))
        self.preparer = ThreadPoolExecutor(1, thread_name_prefix=f"clipblip-{service.name}-prepare",
                                           initializer=os_name, initargs=(f"cb-prep {service.name}",))
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
        prepares = getattr(self.service, "prepares", None)
        staged = prepares is not None and prepares(job)
        waiting = Waiting(job, asyncio.get_running_loop().create_future(), staged=staged, ready=not staged)
        self.groups.setdefault((job.op, job.key), []).append(waiting)
        self.depth += len(job.items)
        self.on_depth(self.service.name, self.depth)
        if staged:
            self.unprepared.append(waiting)
            self.feed()
        else:
            self.arrived.set()
        return await waiting.future

    def feed(self) -> None:
        """Hand the oldest unprepared jobs to the preparing thread while fewer than ``max_prepared`` items are
        prepared (or being prepared) and not yet taken by an engine call; a job alone always goes."""
        loop = asyncio.get_running_loop()
        while self.unprepared and (not self.prepared_items or
                                   self.prepared_items + len(self.unprepared[0].job.items) <= self.max_prepared):
            waiting = self.unprepared.popleft()
            self.prepared_items += len(waiting.job.items)
            loop.run_in_executor(self.preparer, self.service.prepare, waiting.job).add_done_callback(
                lambda done, waiting=waiting: self.prepared(waiting, done))

    def prepared(self, waiting: Waiting, done: asyncio.Future) -> None:
        """The job's images are ready; or preparing them failed (a bug, which that job alone learns of)."""
        if done.exception() is None:
            waiting.job, waiting.ready = done.result(), True
        else:
            self.groups[(waiting.job.op, waiting.job.key)].remove(waiting)
            self.drop_empty()
            self.prepared_items -= len(waiting.job.items)
            self.finished(len(waiting.job.items))
            waiting.future.set_exception(done.exception())
            self.feed()
        self.arrived.set()

    async def dispatch(self) -> None:
        """Forever: the oldest group with a ready job, grown for at most ``wait_ms``, as one engine call."""
        loop = asyncio.get_running_loop()
        while True:
            while (group := self.oldest_ready()) is None:
                self.arrived.clear()
                await self.arrived.wait()
            # Idle, the batch grows for wait_ms after its first job came, up to max_batch. Busy (that job came
            # during the last call or just after it), it waits for the items that waited through the last call
            # plus as many as that call answered, for a tenth of its time: those clients are on their way
            # back, and a call that leaves without them splits the clients in two groups that take turns for
            # good (16 clients on int8 CLIP base: calls of 4 and 12, or 8 and 8). What is not ready by then
            # goes to the next call, and is prepared while this one runs. One client alone is never kept
            # waiting; a batch waits at most RETURN_WAIT_S.
            first = next(w.since for w in self.groups[group] if w.ready)
            if first - self.answered_at < self.wait_s:
                waited = sum(len(w.job.items) for w in self.groups[group] if w.since < self.answered_at)
                expected = min(self.max_batch, waited + self.answered)
                deadline = self.answered_at + min(max(self.wait_s, self.call_s / 10), RETURN_WAIT_S)
            else:
                expected, deadline = self.max_batch, first + self.wait_s
            while self.ready_items(group) < expected and (left := deadline - time.monotonic()) > 0:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = self.take(group)
            items = sum(len(w.job.items) for w in batch)
            self.prepared_items -= sum(len(w.job.items) for w in batch if w.staged)
            self.feed()
            self.on_batch(self.service.name, items)
            began = time.monotonic()
            try:
                results = await loop.run_in_executor(self.worker, self.service.run, [w.job for w in batch])
            except Exception as e:  # a bug, not a bad input: every job of the call learns of it
                results = [e] * len(batch)
            for waiting, result in zip(batch, results):
                if not waiting.future.done():
                    if isinstance(result, Exception):
                        waiting.future.set_exception(result)
                    else:
                        waiting.future.set_result(result)
            self.answered, self.answered_at = items, time.monotonic()
            self.call_s = self.answered_at - began
            self.finished(items)

    def finished(self, items: int) -> None:
        self.depth -= items
        self.on_depth(self.service.name, self.depth)

    def oldest_ready(self) -> tuple | None:
        """The group whose oldest ready job waits longest (None while no job is ready)."""
        ready = [(next(w.since for w in waiting if w.ready), group) for group, waiting in self.groups.items()
                 if any(w.ready for w in waiting)]
        return min(ready, key=lambda since_group: since_group[0])[1] if ready else None

    def ready_items(self, group: tuple) -> int:
        return sum(len(w.job.items) for w in self.groups.get(group, []) if w.ready)

    def take(self, group: tuple) -> list[Waiting]:
        """The group's oldest ready jobs up to ``max_batch`` items (always at least one job)."""
        waiting = self.groups[group]
        taken, count = [], 0
        for w in [w for w in waiting if w.ready]:
            if taken and count + len(w.job.items) > self.max_batch:
                break
            count += len(w.job.items)
            taken.append(w)
            waiting.remove(w)
        self.drop_empty()
        return taken

    def drop_empty(self) -> None:
        for group in [g for g, waiting in self.groups.items() if not waiting]:
            del self.groups[group]

    async def close(self) -> None:
        """Take no new jobs, finish every accepted one, then stop the threads."""
        self.closing = True
        while self.depth:
            await asyncio.sleep(0.01)
        if self.task is not None:
            self.task.cancel()
        self.preparer.shutdown(wait=True)
        self.worker.shutdown(wait=True)
