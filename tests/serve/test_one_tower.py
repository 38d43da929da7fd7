"""The server with one-tower folders (export --towers image|text): each model lists its towers and the operations
it does; what needs the missing tower is a 422 with one line naming it; `serve --db` answers text queries of a
database indexed by the image tower alone with a served text tower of the same checkpoint."""

from __future__ import annotations

import base64

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the `serve` extra (fastapi, uvicorn, prometheus-client) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from clipblip.engine import ClipEngine  # noqa: E402
from clipblip.search import index_paths, search  # noqa: E402
from clipblip.serve import LocalBackend, Metrics, create_app  # noqa: E402
from clipblip.serve.search import SearchService  # noqa: E402
from clipblip.serve.service import ModelService  # noqa: E402


def services_of(folders: dict) -> dict[str, ModelService]:
    return {name: ModelService(name, ClipEngine.from_dir(folder, provider="cpu")) for name, folder in folders.items()}


def client_of(services: dict, search_service=None) -> TestClient:
    backend = LocalBackend(services, max_batch=8, batch_wait_ms=1, max_queue=64, metrics=Metrics())
    return TestClient(create_app(backend, search=search_service))


@pytest.fixture(scope="module")
def photo(photos) -> str:
    return base64.b64encode(photos[0].read_bytes()).decode()


def test_what_needs_the_missing_tower_is_a_422_naming_it(clip_towers, photo):
    with client_of(services_of({"img": clip_towers.image, "txt": clip_towers.text})) as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert models["img"]["towers"] == ["image"] and models["img"]["ops"] == ["embed_image"]
        assert models["txt"]["towers"] == ["text"] and models["txt"]["ops"] == ["embed_text"]
        refusals = [
            ("/v1/embeddings", {"model": "txt", "input": [photo], "modality": "image"}, "txt", "text",
             "embedding images needs the image tower: export with --towers image or both"),
            ("/v1/embeddings", {"model": "img", "input": ["a cat"]}, "img", "image",
             "embedding texts needs the text tower: export with --towers text or both"),
            ("/v1/similarity", {"model": "txt", "images": [photo], "texts": ["a cat"]}, "txt", "text",
             "similarity needs both towers"),
            ("/v1/classify", {"model": "img", "images": [photo], "labels": ["cat", "dog"]}, "img", "image",
             "zero-shot classification needs both towers"),
        ]
        for route, body, name, held, needs in refusals:
            answer = client.post(route, json=body)
            assert answer.status_code == 422, (route, answer.text)
            error = answer.json()["error"]
            assert error["type"] == "UnsupportedTask" and len(error["message"].splitlines()) == 1
            assert error["message"].startswith(f"model {name!r}: holds only the {held} tower (exported with --towers "
                                               f"{held}); ") and needs in error["message"], error
        for body in ({"model": "img", "input": [photo], "modality": "image"}, {"model": "txt", "input": ["a cat"]}):
            answer = client.post("/v1/embeddings", json=body)
            assert answer.status_code == 200 and len(answer.json()["data"][0]["embedding"]) == models["img"]["dim"]


def test_a_text_tower_alone_answers_text_queries_of_an_image_tower_database(clip_towers, photos, tmp_path, photo):
    db = tmp_path / "photos.db"
    index_paths(db, clip_towers.image, [str(p) for p in photos])
    expected = search(db, text="a woman", k=2, model_dir=clip_towers.text)

    services = services_of({"txt": clip_towers.text})  # a query service: no image tower served
    with client_of(services, SearchService(db, services)) as client:
        assert client.get("/v1/database").json()["queries"] == ["image", "text", "like"]  # images: its own folder
        got = client.post("/v1/search", json={"text": "a woman", "k": 2}).json()
        assert [h["path"] for h in got["hits"]] == [h.path for h in expected]
        np.testing.assert_allclose([h["score"] for h in got["hits"]], [h.score for h in expected], atol=1e-5)

    services = services_of({"img": clip_towers.image})
    with client_of(services, SearchService(db, services)) as client:
        assert client.get("/v1/database").json()["queries"] == ["image", "like"]
        answer = client.post("/v1/search", json={"text": "a woman", "k": 2})
        assert answer.status_code == 422
        message = answer.json()["error"]["message"]
        assert len(message.splitlines()) == 1 and str(db) in message and "text tower" in message
        assert client.post("/v1/search", json={"image": photo, "k": 2}).status_code == 200
