"""Dynamic batching in one process: concurrent jobs for a model are gathered into one engine call.

Per model, two stages on threads of their own, with a bounded queue between them:

* preparing: a job's images are decoded and resized (:meth:`ModelService.prepare`) on the preparing threads as
  soon as it comes while the model waits — during the batch window, and while the event loop reads the other
  requests of the batch. While the model runs, new jobs wait encoded: its ONNX Runtime threads take every core,
  and decoding beside them cost them more than it saved (int8 CLIP base, 2 cores, ``--threads 2``, 16 clients,
  AMD EPYC: 37-40 requests/s decoding beside the calls, 36-46 between them). Only a model that leaves cores free
  (``--threads`` below the cores) has its next jobs prepared while it runs. At most ``PREPARED_BATCHES`` full
  batches of images wait prepared: a prepared image takes far more memory than an encoded one.
* the model: one dispatcher task takes the oldest (op, options) group, lets it grow for at most ``wait_ms`` (or
  until ``max_batch`` items came), waits for its images to be ready, and runs it on the model's worker, off the
  event loop.

Jobs without images (texts) skip the first stage. The queue is bounded in items: a job that would pass
``max_queue`` is refused at once (the HTTP layer answers 503).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from ..engine.machine import usable_cores
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
    future: asyncio.Future  # the job's result
    staged: bool = False  # its images go through the preparing stage
    prepared: asyncio.Future | None = None  # done when they are (staged jobs), set once preparing starts
    taken: bool = False  # in an engine call
    since: float = field(default_factory=time.monotonic)


class Batcher:
    """Gathers the jobs of one model; ``submit`` returns each job's own :class:`JobResult`. ``overlap``: prepare
    images while the model runs too (for a model whose engine leaves cores free)."""

    def __init__(self, service: ModelService, max_batch: int, wait_ms: float, max_queue: int,
                 on_batch: Callable[[str, int], None] | None = None,
                 on_depth: Callable[[str, int], None] | None = None, overlap: bool = False):
        self.service = service
        self.max_batch, self.wait_s, self.max_queue, self.overlap = max_batch, wait_ms / 1000.0, max_queue, overlap
        self.on_batch = on_batch or (lambda model, items: None)
        self.on_depth = on_depth or (lambda model, depth: None)
        self.groups: OrderedDict[tuple, list[Waiting]] = OrderedDict()  # (op, key) -> waiting, oldest first
        self.unprepared: deque[Waiting] = deque()  # staged jobs not handed to the preparing threads, oldest first
        self.prepared_items, self.max_prepared = 0, PREPARED_BATCHES * max_batch  # being prepared or ready, untaken
        self.depth = 0  # items waiting, being prepared or running
        self.model_idle = threading.Event()  # cleared while an engine call runs: preparing threads wait
        self.model_idle.set()
        self.answered, self.answered_at, self.call_s = 0, 0.0, 0.0  # the last engine call: items, end, seconds
        self.closing = False
        self.worker = ThreadPoolExecutor(1, thread_name_prefix=f"clipblip-{service.name}", initializer=os_name,
                                         initargs=(f"cb-model {service.name}",))
        self.preparer = ThreadPoolExecutor(usable_cores(), thread_name_prefix=f"clipblip-{service.name}-prepare",
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
        waiting = Waiting(job, asyncio.get_running_loop().create_future(),
                          staged=prepares is not None and prepares(job))
        self.groups.setdefault((job.op, job.key), []).append(waiting)
        self.depth += len(job.items)
        self.on_depth(self.service.name, self.depth)
        if waiting.staged:
            self.unprepared.append(waiting)
            self.feed()
        self.arrived.set()
        return await waiting.future

    def feed(self) -> None:
        """Hand the oldest unprepared jobs to the preparing threads while fewer than ``max_prepared`` items are
        prepared or being prepared and not yet taken by an engine call (a job alone always goes)."""
        while self.unprepared and (not self.prepared_items or
                                   self.prepared_items + len(self.unprepared[0].job.items) <= self.max_prepared):
            self.prepare(self.unprepared.popleft())

    def prepare(self, waiting: Waiting) -> None:
        loop = asyncio.get_running_loop()
        self.prepared_items += len(waiting.job.items)
        waiting.prepared = loop.run_in_executor(self.preparer, self.prepare_between_calls, waiting.job)
        waiting.prepared.add_done_callback(lambda done: self.ready(waiting, done))

    def prepare_between_calls(self, job: Job) -> Job:
        """On a preparing thread: the job prepared, started only while the model is not running (unless it
        leaves cores free); a preparation under way when a call starts finishes."""
        if not self.overlap:
            self.model_idle.wait()
        return self.service.prepare(job)

    def ready(self, waiting: Waiting, done: asyncio.Future) -> None:
        """The job's images are prepared; or preparing them failed (a bug, which that job alone learns of)."""
        if done.exception() is None:
            waiting.job = done.result()
        else:
            if not waiting.taken:
                self.groups[(waiting.job.op, waiting.job.key)].remove(waiting)
                self.drop_empty()
                self.prepared_items -= len(waiting.job.items)
                self.feed()
            self.finished(len(waiting.job.items))
            if not waiting.future.done():
                waiting.future.set_exception(done.exception())
        self.arrived.set()

    async def dispatch(self) -> None:
        """Forever: the oldest group, grown for at most ``wait_ms``, its images made ready, as one engine call."""
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
            # good (16 clients on int8 CLIP base: calls of 4 and 12, or 8 and 8). Their images are prepared
            # while it waits. One client alone is never kept waiting; a batch waits at most RETURN_WAIT_S.
            first = self.groups[group][0].since
            if first - self.answered_at < self.wait_s:
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
            batch = await self.ready_batch(group)
            if not batch:
                continue
            items = sum(len(w.job.items) for w in batch)
            self.on_batch(self.service.name, items)
            self.model_idle.clear()
            began = time.monotonic()
            try:
                results = await loop.run_in_executor(self.worker, self.service.run, [w.job for w in batch])
            except Exception as e:  # a bug, not a bad input: every job of the call learns of it
                results = [e] * len(batch)
            finally:
                self.model_idle.set()
            for waiting, result in zip(batch, results):
                if not waiting.future.done():
                    if isinstance(result, Exception):
                        waiting.future.set_exception(result)
                    else:
                        waiting.future.set_result(result)
            self.answered, self.answered_at = items, time.monotonic()
            self.call_s = self.answered_at - began
            self.finished(items)

    async def ready_batch(self, group: tuple) -> list[Waiting]:
        """The group's oldest jobs up to ``max_batch`` items (at least one), their images prepared (those still
        waiting for the preparing threads go first); without the jobs whose preparing failed."""
        batch = self.take(group)
        for waiting in batch:
            waiting.taken = True
            if waiting.staged and waiting.prepared is None:
                self.unprepared.remove(waiting)
                self.prepare(waiting)
        self.prepared_items -= sum(len(w.job.items) for w in batch if w.staged)
        self.feed()
        preparing = [w.prepared for w in batch if w.staged and not w.prepared.done()]
        if preparing:
            await asyncio.wait(preparing)
        ready = [w for w in batch if not (w.staged and w.prepared.exception() is not None)]
        for waiting in ready:
            if waiting.staged:
                waiting.job = waiting.prepared.result()
        return ready

    def finished(self, items: int) -> None:
        self.depth -= items
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
        self.drop_empty()
        return taken

    def drop_empty(self) -> None:
        for group in [g for g, waiting in self.groups.items() if not waiting]:
            del self.groups[group]

    async def close(self) -> None:
        """Take no new jobs, finish every accepted one, then stop the threads."""
        self.closing = True
        self.model_idle.set()
        while self.depth:
            await asyncio.sleep(0.01)
        if self.task is not None:
            self.task.cancel()
        self.preparer.shutdown(wait=True)
        self.worker.shutdown(wait=True)
