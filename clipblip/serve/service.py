"""What a server does with one model folder, independent of HTTP and of who batches (stdlib + engine).

A request becomes a :class:`Job`: an operation (``op``), its options (``key``: only jobs with equal
keys share an engine call) and its items (images as encoded bytes, or texts). :meth:`ModelService.run`
runs the jobs of one key as ONE engine call and hands each job exactly its own results and per-item
errors. The single-process batcher and the Ray Serve deployment both call it; neither holds model logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

from ..errors import ClipblipError, UsageError

__all__ = ["OPS", "Job", "JobResult", "ModelService"]

# op -> (what it needs of the folder, what one item is)
OPS = {
    "embed_image": ("embed", "image"),
    "embed_text": ("embed", "text"),
    "caption": ("caption", "image"),
    "vqa": ("vqa", "image"),
    "match": ("match", "image"),
}


@dataclass
class Job:
    """One request's share of an engine call: ``items`` (bytes or texts), ``key`` the options that must
    be equal for jobs to run together (hashable: decoding options as sorted (name, value) pairs),
    ``per_item`` values that travel with each item (VQA questions)."""

    op: str
    items: list
    key: tuple[Hashable, ...] = ()
    per_item: list | None = None


@dataclass
class JobResult:
    """Per item of a job: its result, or its error (``errors`` maps the index in the job's items);
    ``error`` when the job as a whole cannot run (options out of range, an op the model lacks); ``tokens``
    counts the tokens of a text job's items."""

    results: list
    errors: dict[int, ClipblipError] = field(default_factory=dict)
    error: ClipblipError | None = None
    tokens: int = 0  # text tokens the job's items held (OpenAI's usage)


class ModelService:
    """An engine behind a name, with the operations its folder supports."""

    def __init__(self, name: str, engine: Any):
        self.name = name
        self.engine = engine
        self.family = engine.manifest.family
        self.tasks = list(engine.manifest.tasks)
        self.embeds = "embed" in self.tasks or "match" in self.tasks  # BLIP retrieval: its ITC projections

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models`` says of this model."""
        manifest = self.engine.manifest
        generation = manifest.model.get("generation", {})
        return {"id": self.name, "object": "model", "family": self.family, "tasks": self.tasks,
                "ops": self.ops(), "precision": self.engine.precision, "random_weights": manifest.random_weights,
                "source": manifest.source.get("model"), "max_batch": self.engine.max_batch,
                "logit_scale": getattr(self.engine, "logit_scale", None),
                # zero-shot classification: how a label's probability is made, and the model's own prompt
                "scoring": getattr(self.engine, "scoring", None),
                "logit_bias": getattr(self.engine, "logit_bias", None),
                "prompt_template": getattr(self.engine, "prompt_template", None),
                "dim": getattr(self.engine, "embed_dim", None) if self.embeds else None,
                "max_new_tokens": {task: generation.get("default_max_new_tokens")
                                   for task in ("caption", "vqa") if task in self.tasks}}

    def ops(self) -> list[str]:
        return [op for op, (needs, _) in OPS.items() if (self.embeds if needs == "embed" else needs in self.tasks)]

    def check(self, op: str, key: tuple = ()) -> None:
        """UsageError (a 422) unless this model does ``op`` with these options; nothing runs."""
        if op not in self.ops():
            raise UsageError(f"model {self.name!r} ({self.family}, {', '.join(self.tasks)}) cannot do {op}; "
                             f"it does {', '.join(self.ops())}")
        if op == "caption":
            prompt, max_new_tokens, options = key
            self.engine.generation_options(len(self.engine.caption_prompt(prompt)), max_new_tokens, **dict(options))
        elif op == "vqa":
            max_new_tokens, options = key
            self.engine.generation_options(1, max_new_tokens, **dict(options))

    def run(self, jobs: Sequence[Job]) -> list[JobResult]:
        """Jobs of one op and key as one engine call; each gets its own rows back. If that call fails as
        a whole, each job runs alone, so that one job's fault never fails the others."""
        op, key = jobs[0].op, jobs[0].key
        if any(j.op != op or j.key != key for j in jobs):
            raise ValueError("ModelService.run: jobs of one call must share op and key")
        try:
            self.check(op, key)
        except ClipblipError as e:  # the options are wrong for every job of this key
            return [JobResult([None] * len(job.items), error=e) for job in jobs]
        try:
            return self._run(jobs)
        except ClipblipError as e:
            if len(jobs) == 1:
                return [JobResult([None] * len(jobs[0].items), error=e)]
            return [self.run([job])[0] for job in jobs]

    def _run(self, jobs: Sequence[Job]) -> list[JobResult]:
        op, key = jobs[0].op, jobs[0].key
        items = [item for job in jobs for item in job.items]
        per_item = [v for job in jobs for v in (job.per_item or [None] * len(job.items))]
        results, errors = self.call(op, key, items, per_item)
        out, start = [], 0
        for job in jobs:
            rows = range(start, start + len(job.items))
            tokens = sum(map(len, self.engine.tokenizer.ids(job.items))) if op == "embed_text" else 0
            out.append(JobResult([results[i] for i in rows], {i - start: errors[i] for i in rows if i in errors},
                                 tokens=tokens))
            start += len(job.items)
        return out

    def call(self, op: str, key: tuple, items: list, per_item: list) -> tuple[list, dict]:
        """One engine call: per item a result (plain data) or an error, under its index in ``items``."""
        engine = self.engine
        if op == "embed_image":
            rows, errors = engine.embed_images(items, return_errors=True)
            return list(rows), errors
        if op == "embed_text":
            rows, errors = engine.embed_texts(items, return_errors=True)
            return list(rows), errors
        if op == "caption":
            prompt, max_new_tokens, options = key
            return engine.generate_captions(items, prompt, max_new_tokens, return_errors=True, **dict(options))
        if op == "vqa":
            max_new_tokens, options = key
            return engine.generate_answers(items, per_item, max_new_tokens, return_errors=True, **dict(options))
        if op == "match":
            texts = list(key)
            scores, errors = engine.match(items, texts, return_errors=True)
            return list(zip(scores.itm, scores.itc)), errors
        raise UsageError(f"unknown operation {op!r}")

