"""The registry of server operations: a new operation is one class (its route, listing and batching follow), and
the operations' engine calls give each item of several batched jobs what the engine gives it alone — images of
classify and similarity requests with different labels in one call, beam search in chunks of max_batch rows."""

import base64

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the `serve` extra (fastapi, uvicorn, prometheus-client) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from clipblip.engine import BlipEngine, ClipEngine  # noqa: E402
from clipblip.errors import GenerationConfigError, ImageError  # noqa: E402
from clipblip.serve import LocalBackend, Metrics, create_app  # noqa: E402
from clipblip.serve.operations import (OPERATIONS, Body, ClassifyBody, Job, Operation, SimilarityBody,  # noqa: E402
                                      operation)
from clipblip.serve.service import ModelService  # noqa: E402


class ShoutBody(Body):
    texts: list[str]


class Shout(Operation):
    """The example of docs/serving.md: texts in upper case, one engine call over every batched request's texts."""

    key = "shout"
    route = "/v1/shout"
    body = ShoutBody
    summary = "Texts in upper case"
    needs = ("embed",)
    images = False

    def job(self, body, model):
        return Job(self.key, body.texts)

    def run(self, engine, key, items, per_item):
        return [text.upper() for text in items], {}

    def answer(self, body, results, model):
        return {"shouted": results}


@pytest.fixture
def shout():
    operation(Shout)
    try:
        yield
    finally:
        del OPERATIONS["shout"]


def test_a_new_operation_is_one_class_in_the_registry(shout, clip_with_attentions, blip_caption):
    services = {"clip": ModelService("clip", ClipEngine.from_dir(clip_with_attentions.exported)),
                "cap": ModelService("cap", BlipEngine.from_dir(blip_caption.exported))}
    backend = LocalBackend(services, max_batch=8, batch_wait_ms=1, max_queue=64, metrics=Metrics())
    with TestClient(create_app(backend)) as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert models["clip"]["ops"] == ["embed_image", "embed_text", "shout"] and models["cap"]["ops"] == ["caption"]
        answer = client.post("/v1/shout", json={"model": "clip", "texts": ["a cat", "猫"]})
        assert answer.status_code == 200
        random = services["clip"].description["random_weights"]
        assert answer.json() == {"model": "clip", "random_weights": random, "shouted": ["A CAT", "猫"]}
        refused = client.post("/v1/shout", json={"model": "cap", "texts": ["a"]})
        assert refused.status_code == 422 and "does not do shout" in refused.json()["error"]["message"]
        assert "/v1/shout" in client.get("/openapi.json").json()["paths"]
    with pytest.raises(ValueError, match="two operations"):
        operation(Shout)


def test_the_models_listing_is_unchanged_by_operations_listed_under_another():
    listed = [op.listed_as or op.key for op in OPERATIONS.values()]
    assert list(dict.fromkeys(listed)) == ["embed_image", "embed_text", "caption", "vqa", "match"]
    assert len({op.key for op in OPERATIONS.values()}) == len(OPERATIONS)


def test_images_of_classify_and_similarity_jobs_share_one_call_whatever_their_texts(clip_with_attentions, photos):
    engine = ClipEngine.from_dir(clip_with_attentions.exported)
    calls = []
    embed_images = engine.embed_images

    def counted(images, **kwargs):
        calls.append(len(images))
        return embed_images(images, **kwargs)

    engine.embed_images = counted
    service = ModelService("clip", engine)
    images = [base64.b64encode(p.read_bytes()).decode() for p in photos]
    labels = [["cat", "dog"], ["a box", "a tree", "sky"], ["cat", "dog"]]
    classify = OPERATIONS["classify"]
    jobs = [classify.job(ClassifyBody(model="clip", images=images, labels=ls), service.description) for ls in labels]
    results = service.run(jobs)
    assert calls == [3 * len(images)]  # one engine call for the images of the three requests
    for ls, result in zip(labels, results):
        assert not result.errors and result.error is None
        for got, expected in zip(result.results, engine.classify(photos, ls)):
            assert [label for label, _ in got] == [label for label, _ in expected]
            np.testing.assert_allclose([p for _, p in got], [p for _, p in expected], atol=1e-6)

    texts = [("a", "b c"), ("x",)]
    similarity = OPERATIONS["similarity"]
    results = service.run([similarity.job(SimilarityBody(model="clip", images=images, texts=list(t)),
                                          service.description) for t in texts])
    for t, result in zip(texts, results):
        np.testing.assert_allclose(np.stack(result.results), engine.similarity(photos, list(t)), atol=1e-6)


def test_beam_search_runs_in_chunks_of_max_batch_rows_and_refuses_more_beams(blip_caption, photos):
    small = ModelService("cap", BlipEngine.from_dir(blip_caption.exported, max_batch=4))
    engine = BlipEngine.from_dir(blip_caption.exported)
    images = [p.read_bytes() for p in photos] * 3  # 6 images × 3 beams: chunks of one image (3 rows of 4)
    options = (("num_beams", 3),)
    (result,) = small.run([Job("caption", images, (None, 5, options))])
    expected = engine.generate_captions(images, None, 5, num_beams=3)
    assert [g.token_ids for g in result.results] == [g.token_ids for g in expected]
    (refused,) = small.run([Job("caption", images[:1], (None, 5, (("num_beams", 5),)))])
    assert isinstance(refused.error, GenerationConfigError) and "at most 4 beams" in str(refused.error)


def test_prepared_images_give_the_engine_s_own_results_and_only_to_an_engine_of_the_same_steps(
        clip_with_attentions, blip_caption, photos):
    clip = ClipEngine.from_dir(clip_with_attentions.exported)
    service = ModelService("clip", clip)
    images = [p.read_bytes() for p in photos] + [b"not an image"]
    job = Job("embed_image", images)
    assert service.prepares(job) and not service.prepares(Job("embed_text", ["a"]))
    prepared = service.prepare(job)
    assert isinstance(prepared.items[-1], ImageError)
    (result,) = service.run([prepared])
    np.testing.assert_array_equal(np.stack([row for row, _ in result.results[:2]]), clip.embed_images(photos))
    assert list(result.errors) == [2] and isinstance(result.errors[2], ImageError)
    blip = BlipEngine.from_dir(blip_caption.exported)
    with pytest.raises(ImageError, match="other preprocessing steps"):
        blip.generate_captions(prepared.items[:1], None, 2)
