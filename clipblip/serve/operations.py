"""What the server does, one class per operation, in one registry (:data:`OPERATIONS`).

An :class:`Operation` says, in one place: its ``key`` (the job's op: jobs batch with jobs of the same key and
options), its route and request body, which models do it, how a body becomes a :class:`~.service.Job`, how its
options are checked against the engine, how it runs as ONE engine call over the items of every batched job (each
item's result, or its error under its index), and how its answer is written. The routes
(:mod:`.app`), :class:`~.service.ModelService` and the Ray Serve deployment loop over the registry; adding an
operation is adding a class here (and its line in docs/serving.md).

Model logic (prompts from labels, similarities, label probabilities) is here, run next to the engine; the HTTP
layer only reads bodies and writes answers. Images are a job's items, so the images of concurrent requests share
engine calls whatever their texts: text embeddings are computed once per distinct set of texts in a call.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Hashable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

from ..engine.base import missing_towers, tower_refusal
from ..engine.clip import label_prompts
from ..engine.generate import OPTION_NAMES, option_rules, option_types
from ..errors import ClipblipError, GenerationConfigError
from .errors import ApiError

__all__ = ["Operation", "OPERATIONS", "operation", "Job", "JobResult", "Body", "decode_image", "decode_images",
           "decoding_model"]

DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)

Outcome = tuple[list, dict[int, ClipblipError]]  # per item its result, and {index: error} of the failed ones


@dataclass
class Job:
    """One request's share of an engine call: ``op`` (an operation's key), its ``items`` (encoded images, or
    texts), ``key`` the options that must be equal for jobs to run together (hashable: decoding options as
    sorted (name, value) pairs), ``per_item`` values that travel with each item (a VQA question, a text set)."""

    op: str
    items: list
    key: tuple[Hashable, ...] = ()
    per_item: list | None = None


@dataclass
class JobResult:
    """Per item of a job: its result, or its error (``errors`` maps the index in the job's items); ``error``
    when the job as a whole cannot run (options out of range, an operation the model does not do)."""

    results: list
    errors: dict[int, ClipblipError] = field(default_factory=dict)
    error: ClipblipError | None = None


# --- request bodies ----------------------------------------------------------------------------------

class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str


class EmbeddingsBody(Body):
    """OpenAI's embeddings request, with clipblip's ``modality`` (images as base64 or data URIs)."""

    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None  # accepted, as OpenAI does, and not used
    modality: Literal["text", "image"] = "text"


class ImagesBody(Body):
    images: list[str] = Field(min_length=1, description="base64, plain or as a data:image/...;base64, URI")


class SimilarityBody(ImagesBody):
    texts: list[str] = Field(min_length=1)


class ClassifyBody(ImagesBody):
    labels: list[str] = Field(min_length=1)
    template: str | None = None  # the model's own prompt (its manifest's prompt_template) when not given


class DecodingFields(BaseModel):
    def options(self) -> tuple:
        """The set options other than max_new_tokens, hashable (a batching key)."""
        return tuple(sorted((name, value) for name, value in self.model_dump(exclude={"max_new_tokens"}).items()
                            if value is not None and name in OPTION_NAMES))


def decoding_model() -> type[BaseModel]:
    """transformers' generate() options as request fields, one per field of GenerationOptions (its type and help);
    unset ones come from the checkpoint's generation config."""
    kinds = option_types()
    return create_model("Decoding", __base__=DecodingFields, **{
        name: (kinds[name] | None, Field(None, description=rule.help)) for name, rule in option_rules().items()})


Decoding = decoding_model()


class CaptionBody(ImagesBody, Decoding):
    prompt: str | None = None


class VqaBody(ImagesBody, Decoding):
    question: str


class MatchBody(ImagesBody):
    texts: list[str] = Field(min_length=1)


def decode_image(text: str, field: str, index: int | None = None) -> bytes:
    """base64 (plain or data URI) → the encoded image file; 400 naming the field (and item) if it is not base64."""
    try:
        return base64.b64decode(DATA_URI.sub("", text.strip()), validate=True)
    except (binascii.Error, ValueError):
        where = field if index is None else f"{field}[{index}]"
        raise ApiError(400, "InvalidBase64", f"{where}: not base64 (plain or a data:image/...;base64, URI)",
                       index) from None


def decode_images(images: list[str], field: str = "images") -> list[bytes]:
    """Each item of a list of base64 images; 400 naming the first that is not base64."""
    return [decode_image(text, field, i) for i, text in enumerate(images)]


# --- the operation -----------------------------------------------------------------------------------

class Operation:
    """One thing the server does. Subclasses set the class attributes and override what differs."""

    key: ClassVar[str]  # the job's op; unique in the registry
    route: ClassVar[str]  # POST route; operations may share one, told apart by :meth:`takes`
    body: ClassVar[type[Body]]
    summary: ClassVar[str]  # one line for the API docs
    needs: ClassVar[tuple[str, ...]]  # the folder must have one of these tasks
    towers: ClassVar[tuple[str, ...]] = ()  # and these towers, where it holds one alone (export --towers)
    doing: ClassVar[str] = ""  # what needs them, for the refusal: "embedding images"
    listed_as: ClassVar[str | None] = None  # its name in GET /v1/models "ops" (default: its key)
    images: ClassVar[bool] = True  # items are images (decoded on the batcher's preparing thread)

    def takes(self, body: Body) -> bool:
        """Whether this operation answers ``body`` (for operations that share a route)."""
        return True

    def does(self, model: dict[str, Any]) -> bool:
        """Whether the model (as :meth:`ModelService.describe` says) does this operation."""
        return any(task in model["tasks"] for task in self.needs) and not self.missing_towers(model)

    def missing_towers(self, model: dict[str, Any]) -> list[str]:
        """The towers this operation needs that the model's folder does not hold."""
        return missing_towers(model.get("towers"), self.towers)

    def refusal(self, name: str, model: dict[str, Any]) -> str:
        """Why the model does not do this operation, and the routes it answers."""
        if self.missing_towers(model):
            return tower_refusal(f"model {name!r}", model["towers"], self.towers, self.doing)
        return (f"model {name!r} ({model['family']}: {', '.join(model['tasks'])}) does not do {self.key}; "
                f"it answers {', '.join(routes_of(model)) or 'no route'}")

    def job(self, body: Body, model: dict[str, Any]) -> Job:
        """The request as a job; ApiError for a body the model cannot take (nothing runs)."""
        return Job(self.key, decode_images(body.images))

    def check(self, engine: Any, key: tuple) -> None:
        """A ClipblipError (a 422) unless the engine takes these options; nothing runs."""

    def run(self, engine: Any, key: tuple, items: list, per_item: list) -> Outcome:
        """ONE engine call over the items of every batched job (``per_item``: each item's own value)."""
        raise NotImplementedError

    def answer(self, body: Body, results: list, model: dict[str, Any]) -> dict[str, Any]:
        """The JSON answer (``model`` and ``random_weights`` are added by the route), from each item's result."""
        raise NotImplementedError


OPERATIONS: dict[str, Operation] = {}


def operation(cls: type[Operation]) -> type[Operation]:
    """Class decorator: registers one instance of ``cls`` under its key."""
    if cls.key in OPERATIONS:
        raise ValueError(f"two operations named {cls.key!r}")
    OPERATIONS[cls.key] = cls()
    return cls


def routes_of(model: dict[str, Any]) -> list[str]:
    """The routes of the operations a model does, each once."""
    return list(dict.fromkeys(op.route for op in OPERATIONS.values() if op.does(model)))


def by_text_set(per_item: Sequence[tuple]) -> dict[tuple, list[int]]:
    """{a set of texts: the indices of the items that carry it}, in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, texts in enumerate(per_item):
        groups.setdefault(texts, []).append(i)
    return groups


def similarities(engine: Any, items: list, per_item: list[tuple]) -> Outcome:
    """Per image, its cosine similarity to each text of its own set (float32 (texts,)); each distinct set is
    embedded once. A text that cannot be embedded fails the images that carry it."""
    rows, errors = engine.embed_images(items, return_errors=True)  # (images, dim)
    results: list = [None] * len(items)
    for texts, indices in by_text_set(per_item).items():
        text_rows, text_errors = engine.embed_texts(list(texts), return_errors=True)  # (texts, dim)
        if text_errors:
            for i in indices:
                errors.setdefault(i, text_errors[min(text_errors)])
            continue
        for i, row in zip(indices, rows[indices] @ text_rows.T):
            if i not in errors:
                results[i] = row
    return results, errors


def embedding(row: np.ndarray, encoding_format: str):
    """A row as OpenAI returns it: a list of floats, or base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode()
    return row.tolist()


def generations(results) -> list[dict[str, Any]]:
    return [{"text": g.text, "token_ids": g.token_ids, "prompt_ids": g.prompt_ids,
             **({} if g.score is None else {"score": g.score})} for g in results]


# --- the operations ----------------------------------------------------------------------------------

class Embeddings(Operation):
    """Shared by the two modalities of /v1/embeddings."""

    route = "/v1/embeddings"
    body = EmbeddingsBody
    summary = "Embeddings of texts or images (OpenAI's embeddings API, with clipblip's modality)"
    needs = ("embed", "match")  # BLIP retrieval folders embed through their ITC projections
    modality: ClassVar[str]

    def takes(self, body: EmbeddingsBody) -> bool:
        return body.modality == self.modality

    def items(self, body: EmbeddingsBody, model: dict[str, Any]) -> list[str]:
        items = [body.input] if isinstance(body.input, str) else body.input
        if not items:
            raise ApiError(422, "InvalidRequest", "input: give one item or more")
        if body.dimensions is not None and body.dimensions != model["dim"]:
            raise ApiError(400, "InvalidRequest", f"dimensions {body.dimensions}: model {body.model!r} gives "
                                                  f"{model['dim']}-dimensional embeddings and does not shorten them")
        return items

    def answer(self, body: EmbeddingsBody, results: list, model: dict[str, Any]) -> dict[str, Any]:
        tokens = sum(count for _, count in results)
        return {"object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": embedding(row, body.encoding_format)}
                         for i, (row, _) in enumerate(results)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


@operation
class EmbedImage(Embeddings):
    key = "embed_image"
    modality = "image"
    towers = ("image",)
    doing = "embedding images"

    def job(self, body: EmbeddingsBody, model: dict[str, Any]) -> Job:
        return Job(self.key, decode_images(self.items(body, model), "input"))

    def run(self, engine: Any, key: tuple, items: list, per_item: list) -> Outcome:
        rows, errors = engine.embed_images(items, return_errors=True)  # (items, dim)
        return [(row, 0) for row in rows], errors  # images count no tokens


@operation
class EmbedText(Embeddings):
    key = "embed_text"
    modality = "text"
    images = False
    towers = ("text",)
    doing = "embedding texts"

    def job(self, body: EmbeddingsBody, model: dict[str, Any]) -> Job:
        return Job(self.key, self.items(body, model))

    def run(self, engine: Any, key: tuple, items: list, per_item: list) -> Outcome:
        rows, errors = engine.embed_texts(items, return_errors=True)  # (items, dim)
        return [(row, len(ids)) for row, ids in zip(rows, engine.tokenizer.ids(items))], errors


@operation
class Similarity(Operation):
    key = "similarity"
    route = "/v1/similarity"
    body = SimilarityBody
    summary = "Cosine similarity of each image to each text"
    needs = ("embed", "match")
    towers = ("image", "text")
    doing = "similarity"
    listed_as = "embed_image"

    def job(self, body: SimilarityBody, model: dict[str, Any]) -> Job:
        images = decode_images(body.images)
        return Job(self.key, images, per_item=[tuple(body.texts)] * len(images))

    def run(self, engine: Any, key: tuple, items: list, per_item: list) -> Outcome:
        return similarities(engine, items, per_item)

    def answer(self, body: SimilarityBody, results: list, model: dict[str, Any]) -> dict[str, Any]:
        return {"similarity": [row.tolist() for row in results]}


@operation
class Classify(Operation):
    key = "classify"
    route = "/v1/classify"
    body = ClassifyBody
    summary = "Zero-shot classification: each label's probability per image"
    needs = ("embed",)
    towers = ("image", "text")
    doing = "zero-shot classification"
    listed_as = "embed_image"

    def does(self, model: dict[str, Any]) -> bool:
        return super().does(model) and model.get("scoring") is not None

    def refusal(self, name: str, model: dict[str, Any]) -> str:
        if model.get("scoring") is not None:
            return super().refusal(name, model)
        return f"model {name!r}: zero-shot classification needs a CLIP-like model (CLIP, Chinese-CLIP, SigLIP)"

    def template(self, body: ClassifyBody, model: dict[str, Any]) -> str:
        return model["prompt_template"] if body.template is None else body.template

    def job(self, body: ClassifyBody, model: dict[str, Any]) -> Job:
        try:
            prompts = tuple(label_prompts(self.template(body, model), body.labels))
        except ClipblipError as e:
            raise ApiError(422, "InvalidRequest", str(e)) from None
        images = decode_images(body.images)
        return Job(self.key, images, per_item=[(prompts, tuple(body.labels))] * len(images))

    def run(self, engine: Any, key: tuple, items: list, per_item: list) -> Outcome:
        """Per image, (label, probability) pairs best first, scored as the model's family scores labels."""
        similarity, errors = similarities(engine, items, [prompts for prompts, _ in per_item])
        results: list = [None] * len(items)
        for i, (row, (_, labels)) in enumerate(zip(similarity, per_item)):
            if row is not None:
                probabilities = engine.label_probabilities(row[None])[0]  # (labels,)
                results[i] = sorted(zip(labels, map(float, probabilities)), key=lambda pair: -pair[1])
        return results, errors

    def answer(self, body: ClassifyBody, results: list, model: dict[str, Any]) -> dict[str, Any]:
        return {"template": self.template(body, model), "scoring": model["scoring"],
                "results": [[{"label": label, "probability": p} for label, p in ranked] for ranked in results]}


class Generate(Operation):
    """Shared by captions and answers: decoding options checked as the engine settles them, and beam search run
    in chunks of at most ``max_batch`` decoder rows (images × beams), so that no request can ask for more memory
    than a full batch takes."""

    def settled(self, engine: Any, key: tuple):
        """The decoding options the engine would use for this key; GenerationConfigError if they are wrong."""
        raise NotImplementedError

    def check(self, engine: Any, key: tuple) -> None:
        beams = self.settled(engine, key).num_beams
        if beams > engine.max_batch:
            raise GenerationConfigError(f"num_beams={beams}: this server decodes at most {engine.max_batch} rows "
                                        f"at once (--max-batch), so at most {engine.max_batch} beams")

    def generate(self, engine: Any, key: tuple, items: list, per_item: list) -> Outcome:
        raise NotImplementedError

    def run(self, engine: Any, key: tuple, items: list, per_item: list) -> Outcome:
        beams = self.settled(engine, key).num_beams
        chunk = max(1, engine.max_batch // beams)
        if beams == 1 or chunk >= len(items):  # sampling's random stream runs across one call's items
            return self.generate(engine, key, items, per_item)
        results, errors = [], {}
        for start in range(0, len(items), chunk):
            found, failed = self.generate(engine, key, items[start:start + chunk], per_item[start:start + chunk])
            results += found
            errors.update({start + i: error for i, error in failed.items()})
        return results, errors

    def answer(self, body: Body, results: list, model: dict[str, Any]) -> dict[str, Any]:
        return {"results": generations(results)}


@operation
class Caption(Generate):
    key = "caption"
    route = "/v1/caption"
    body = CaptionBody
    summary = "Captions, unconditional or continuing a prompt (BLIP caption)"
    needs = ("caption",)

    def job(self, body: CaptionBody, model: dict[str, Any]) -> Job:
        return Job(self.key, decode_images(body.images), (body.prompt, body.max_new_tokens, body.options()))

    def settled(self, engine: Any, key: tuple):
        prompt, max_new_tokens, options = key
        return engine.generation_options(len(engine.caption_prompt(prompt)), max_new_tokens, **dict(options))

    def generate(self, engine: Any, key: tuple, items: list, per_item: list) -> Outcome:
        prompt, max_new_tokens, options = key
        return engine.generate_captions(items, prompt, max_new_tokens, return_errors=True, **dict(options))


@operation
class Vqa(Generate):
    key = "vqa"
    route = "/v1/vqa"
    body = VqaBody
    summary = "Answers to a question about each image (BLIP VQA)"
    needs = ("vqa",)

    def job(self, body: VqaBody, model: dict[str, Any]) -> Job:
        images = decode_images(body.images)
        return Job(self.key, images, (body.max_new_tokens, body.options()), [body.question] * len(images))

    def settled(self, engine: Any, key: tuple):
        max_new_tokens, options = key
        return engine.generation_options(1, max_new_tokens, **dict(options))

    def generate(self, engine: Any, key: tuple, items: list, per_item: list) -> Outcome:
        max_new_tokens, options = key
        return engine.generate_answers(items, per_item, max_new_tokens, return_errors=True, **dict(options))


@operation
class Match(Operation):
    key = "match"
    route = "/v1/match"
    body = MatchBody
    summary = "Image–text matching (ITM) and contrastive similarity (ITC) of each image to each text (BLIP retrieval)"
    needs = ("match",)

    def job(self, body: MatchBody, model: dict[str, Any]) -> Job:
        return Job(self.key, decode_images(body.images), tuple(body.texts))

    def run(self, engine: Any, key: tuple, items: list, per_item: list) -> Outcome:
        scores, errors = engine.match(items, list(key), return_errors=True)  # itm, itc: (items, texts)
        return list(zip(scores.itm, scores.itc)), errors

    def answer(self, body: MatchBody, results: list, model: dict[str, Any]) -> dict[str, Any]:
        return {"itm": [itm.tolist() for itm, _ in results], "itc": [itc.tolist() for _, itc in results]}
