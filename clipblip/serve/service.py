"""What a server does with one model folder, independent of HTTP and of who batches.

A request becomes a :class:`Job` of one operation (see :mod:`.operations`). :meth:`ModelService.run` runs the
jobs of one operation and key as ONE engine call and hands each job exactly its own results and per-item
errors; :meth:`ModelService.prepare` decodes and resizes a job's images beforehand, so that a batcher can do it
on a worker of its own while the model runs. The single-process batcher and the Ray Serve deployment both call
``run``; neither holds model logic.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..engine.images import Prepared
from ..errors import ClipblipError, UsageError
from .operations import OPERATIONS, Job, JobResult

__all__ = ["Job", "JobResult", "ModelService"]


class ModelService:
    """An engine behind a name, with the operations its folder supports."""

    def __init__(self, name: str, engine: Any):
        self.name = name
        self.engine = engine
        self.family = engine.manifest.family
        self.tasks = list(engine.manifest.tasks)
        self.description = self.describe()

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models`` says of this model."""
        manifest = self.engine.manifest
        generation = manifest.model.get("generation", {})
        embeds = "embed" in self.tasks or "match" in self.tasks  # BLIP retrieval: its ITC projections
        described = {
            "id": self.name, "object": "model", "family": self.family, "tasks": self.tasks, "ops": [],
            "towers": manifest.towers,  # a CLIP-like folder's: ["image"] or ["text"] where it holds one alone
            "precision": self.engine.precision, "random_weights": manifest.random_weights,
            "source": manifest.source.get("model"), "max_batch": self.engine.max_batch,
            "logit_scale": getattr(self.engine, "logit_scale", None),
            # zero-shot classification: how a label's probability is made, and the model's own prompt
            "scoring": getattr(self.engine, "scoring", None),
            "logit_bias": getattr(self.engine, "logit_bias", None),
            "prompt_template": getattr(self.engine, "prompt_template", None),
            "dim": getattr(self.engine, "embed_dim", None) if embeds else None,
            "max_new_tokens": {task: generation.get("default_max_new_tokens")
                               for task in ("caption", "vqa") if task in self.tasks}}
        for op in OPERATIONS.values():  # "ops": what it does, each ability named once
            listed = op.listed_as or op.key
            if op.does(described) and listed not in described["ops"]:
                described["ops"].append(listed)
        return described

    def operation(self, key: str):
        """The operation ``key`` if this model does it; UsageError (a 422) if not."""
        op = OPERATIONS.get(key)
        if op is None:
            raise UsageError(f"unknown operation {key!r} (known: {', '.join(OPERATIONS)})")
        if not op.does(self.description):
            raise UsageError(op.refusal(self.name, self.description))
        return op

    def prepares(self, job: Job) -> bool:
        """Whether :meth:`prepare` has work for this job: images to decode and resize."""
        op = OPERATIONS.get(job.op)
        return op is not None and op.images and hasattr(self.engine, "preprocess")

    def prepare(self, job: Job) -> Job:
        """The job with each image decoded and resized as the model sees it (a :class:`Prepared`), or its
        ImageError in its place; several images are decoded on every core. A batcher runs this on a worker of
        its own while the model runs other jobs."""
        preprocess = self.engine.preprocess
        pixels, usable, errors = preprocess.each(job.items)  # pixels (usable, 3, H, W)
        items: list = [None] * len(job.items)
        for row, i in enumerate(usable):
            items[i] = Prepared(pixels[row], preprocess)
        for i, error in errors.items():
            items[i] = error
        return Job(job.op, items, job.key, job.per_item)

    def run(self, jobs: Sequence[Job]) -> list[JobResult]:
        """Jobs of one op and key as one engine call; each gets its own rows back. If that call fails as
        a whole, each job runs alone, so that one job's fault never fails the others."""
        key, op_key = jobs[0].key, jobs[0].op
        if any(j.op != op_key or j.key != key for j in jobs):
            raise ValueError("ModelService.run: jobs of one call must share op and key")
        try:
            op = self.operation(op_key)
            op.check(self.engine, key)
        except ClipblipError as e:  # the operation or its options are wrong for every job of this key
            return [JobResult([None] * len(job.items), error=e) for job in jobs]
        try:
            return self._run(op, jobs)
        except ClipblipError as e:
            if len(jobs) == 1:
                return [JobResult([None] * len(jobs[0].items), error=e)]
            return [self.run([job])[0] for job in jobs]

    def _run(self, op, jobs: Sequence[Job]) -> list[JobResult]:
        """One engine call over the usable items of every job (those :meth:`prepare` found unusable carry their
        error); each job's results and errors under its own indices."""
        items = [item for job in jobs for item in job.items]
        per_item = [v for job in jobs for v in (job.per_item or [None] * len(job.items))]
        errors = {i: item for i, item in enumerate(items) if isinstance(item, ClipblipError)}
        usable = [i for i in range(len(items)) if i not in errors]
        results: list = [None] * len(items)
        if usable:
            found, failed = op.run(self.engine, jobs[0].key, [items[i] for i in usable], [per_item[i] for i in usable])
            for row, i in enumerate(usable):
                results[i] = found[row]
            errors.update({usable[row]: error for row, error in failed.items()})
        out, start = [], 0
        for job in jobs:
            rows = range(start, start + len(job.items))
            out.append(JobResult([results[i] for i in rows], {i - start: errors[i] for i in rows if i in errors}))
            start += len(job.items)
        return out
