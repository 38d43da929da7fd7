"""The batcher and the service without HTTP: grouping by options, each job its own rows, a failing
job isolated from its batch, a bounded queue; and the serving package never imports torch."""

import asyncio
import subprocess
import sys

import pytest

pytest.importorskip("fastapi", reason="the `serve` extra (fastapi, uvicorn, prometheus-client) is not installed")

from clipblip.errors import TextInputError  # noqa: E402
from clipblip.serve.batching import Batcher, QueueFull  # noqa: E402
from clipblip.serve.service import Job, JobResult  # noqa: E402


class FakeService:
    """Records each engine call; items are numbers, results their doubles; the item "bad" fails the call."""

    name = "fake"

    def __init__(self):
        self.calls = []

    def run(self, jobs):
        self.calls.append([(job.key, list(job.items)) for job in jobs])
        if any("bad" in job.items for job in jobs):
            if len(jobs) > 1:  # as ModelService does: a failed call is retried job by job
                return [self.run([job])[0] for job in jobs]
            return [JobResult([None] * len(jobs[0].items), error=TextInputError("bad item"))]
        return [JobResult([2 * x for x in job.items]) for job in jobs]


def run_jobs(batcher, jobs):
    async def main():
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(job) for job in jobs), return_exceptions=True)
        finally:
            await batcher.close()

    return asyncio.run(main())


def test_jobs_with_equal_options_share_a_call_and_get_their_own_rows():
    service = FakeService()
    jobs = [Job("op", [i, i + 100], key=("k", i % 2)) for i in range(6)]
    results = run_jobs(Batcher(service, max_batch=8, wait_ms=50, max_queue=100), jobs)
    assert [r.results for r in results] == [[2 * i, 2 * (i + 100)] for i in range(6)]
    for call in service.calls:
        assert len({key for key, _ in call}) == 1  # never two options in one call
        assert sum(len(items) for _, items in call) <= 8
    assert len(service.calls) < 6  # batched


def test_a_failing_job_fails_alone():
    service = FakeService()
    jobs = [Job("op", [1]), Job("op", ["bad"]), Job("op", [3])]
    results = run_jobs(Batcher(service, max_batch=8, wait_ms=50, max_queue=100), jobs)
    assert results[0].results == [2] and results[2].results == [6]
    assert isinstance(results[1].error, TextInputError)


def test_a_full_queue_refuses_at_once():
    results = run_jobs(Batcher(FakeService(), max_batch=8, wait_ms=200, max_queue=2),
                       [Job("op", [1, 2]), Job("op", [3])])
    assert results[0].results == [2, 4] and isinstance(results[1], QueueFull)


def test_the_server_imports_no_torch():
    code = ("import sys, clipblip.serve, clipblip.serve.app, clipblip.serve.server, clipblip.cli; "
            "bad = [m for m in ('torch', 'transformers', 'onnx', 'ray') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout


class SlowService(FakeService):
    """An engine call takes 40 ms, whatever its size (as a batched call costs little more than one item)."""

    def run(self, jobs):
        import time

        time.sleep(0.04)
        return super().run(jobs)


def clients(batcher, count: int, rounds: int, think_s: float):
    """``count`` clients, each sending one item, waiting for its answer, then ``think_s`` before the next."""
    async def client(i):
        for r in range(rounds):
            await batcher.submit(Job("op", [i]))
            await asyncio.sleep(think_s)

    async def main():
        batcher.start()
        try:
            await asyncio.gather(*(client(i) for i in range(count)))
        finally:
            await batcher.close()

    asyncio.run(main())


def test_busy_batches_wait_for_the_clients_just_answered_and_a_lone_client_never_waits():
    service = SlowService()
    # 16 clients coming back 2 ms after their answer, past the 1 ms window: without waiting for them the
    # calls split into a few items and the rest, in turn
    clients(Batcher(service, max_batch=16, wait_ms=1, max_queue=100), 16, 6, 0.002)
    sizes = [sum(len(items) for _, items in call) for call in service.calls]
    assert sizes[1:] == [16] * (len(sizes) - 1), sizes  # the first call takes whoever came in the first window

    lone = SlowService()
    import time

    began = time.monotonic()
    clients(Batcher(lone, max_batch=16, wait_ms=200, max_queue=100), 1, 5, 0.0)
    assert len(lone.calls) == 5 and time.monotonic() - began < 5 * 0.04 + 0.2 + 0.15  # one 200 ms wait at most


class PreparedService(FakeService):
    """Images prepared in a stage of their own: ``prepare`` takes ``prepare_s``, a call ``run_s``; each records
    when it ran and on which thread. The item "boom" breaks its preparation (a bug)."""

    def __init__(self, prepare_s: float, run_s: float):
        super().__init__()
        self.prepare_s, self.run_s = prepare_s, run_s
        self.spans = {"prepare": [], "run": []}  # (start, end, thread)
        self.prepared = self.ran = self.most_ahead = 0

    def prepares(self, job):
        return True

    def prepare(self, job):
        import threading
        import time

        self.most_ahead = max(self.most_ahead, self.prepared - self.ran)  # prepared, not taken by a call
        start = time.monotonic()
        time.sleep(self.prepare_s)
        if "boom" in job.items:
            raise RuntimeError("a bug while preparing")
        self.prepared += len(job.items)
        self.spans["prepare"].append((start, time.monotonic(), threading.get_ident()))
        return Job(job.op, [("prepared", x) for x in job.items], job.key, job.per_item)

    def run(self, jobs):
        import threading
        import time

        self.ran += sum(len(job.items) for job in jobs)
        start = time.monotonic()
        time.sleep(self.run_s)
        self.spans["run"].append((start, time.monotonic(), threading.get_ident()))
        return [JobResult([2 * x for _, x in job.items]) for job in jobs]


def spans_inside(inner, outer) -> int:
    """How many spans of ``inner`` start while one of ``outer`` runs."""
    return sum(any(o0 < i0 < o1 for o0, o1, _ in outer) for i0, _, _ in inner)


def test_images_are_prepared_on_their_own_threads_between_calls_or_beside_a_model_that_leaves_cores_free():
    service = PreparedService(prepare_s=0.01, run_s=0.04)
    clients(Batcher(service, max_batch=4, wait_ms=1, max_queue=100), 8, 3, 0.0)
    prepares, runs = service.spans["prepare"], service.spans["run"]
    assert len(prepares) == 24 and sum(len(items) for call in service.calls for _, items in call) == 0  # all prepared
    assert {t for *_, t in prepares}.isdisjoint({t for *_, t in runs})
    # the model's threads keep the cores while it runs (at most one preparation may start as a call starts:
    # it passed its gate just before); beside a model that leaves cores free, 18 of 24 start inside calls here
    assert spans_inside(prepares, runs) <= 1

    beside = PreparedService(prepare_s=0.01, run_s=0.04)
    clients(Batcher(beside, max_batch=4, wait_ms=1, max_queue=100, overlap=True), 8, 3, 0.0)
    assert spans_inside(beside.spans["prepare"], beside.spans["run"]) >= 8  # the next batch, during a call


def test_prepared_images_wait_in_a_bounded_queue_and_a_broken_preparation_fails_its_job_alone():
    service = PreparedService(prepare_s=0.0, run_s=0.03)
    jobs = [Job("op", ["boom"] if i == 5 else [i]) for i in range(40)]
    results = run_jobs(Batcher(service, max_batch=4, wait_ms=1, max_queue=100), jobs)
    assert isinstance(results[5], RuntimeError)
    assert [r.results for i, r in enumerate(results) if i != 5] == [[2 * i] for i in range(40) if i != 5]
    # prepared ahead, but bounded: PREPARED_BATCHES (2) full batches waiting, and one the batcher took that the
    # worker has not started yet (this fake counts a batch when its call starts); unbounded, all 40 would be
    assert 4 <= service.most_ahead <= 3 * 4, service.most_ahead
