"""POST /v1/search on `clipblip serve --db DB`: the same hits as `clipblip.search.search`, with the served
engines, BLIP ITM re-ranking through a served retrieval model, and clear errors."""

import base64

import numpy as np
import pytest
from PIL import Image

from clipblip.search import index_paths, search

httpx = pytest.importorskip("httpx", reason="httpx (the `test` extra) drives the server")
pytest.importorskip("fastapi", reason="the `serve` extra is not installed")

from tests.serve.test_server import Server, b64  # noqa: E402


@pytest.fixture(scope="module")
def collection(tmp_path_factory, clip_with_attentions, photos):
    root = tmp_path_factory.mktemp("collection")
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (240, 240, 240)]):
        Image.new("RGB", (40 + 10 * i, 30), colour).save(root / f"c{i}.png")
    for photo in photos:
        (root / photo.name).write_bytes(photo.read_bytes())
    db = root.parent / "photos.db"
    index_paths(db, clip_with_attentions.exported, [root])
    return db


def test_search_route_answers_as_the_library_does(clip_with_attentions, blip_itm, collection, photos):
    server = Server([f"clip={clip_with_attentions.exported}", f"itm={blip_itm.exported}"], "--db", str(collection))
    try:
        got = server.post("/v1/search", {"text": "a red square", "k": 3}).json()
        expected = search(collection, text="a red square", k=3)
        assert got["query"] == {"text": "a red square"}
        assert [h["path"] for h in got["hits"]] == [h.path for h in expected]
        np.testing.assert_allclose([h["score"] for h in got["hits"]], [h.score for h in expected], atol=1e-5)

        got = server.post("/v1/search", {"image": b64(photos[0]), "k": 10}).json()
        assert [h["path"] for h in got["hits"]] == [h.path for h in search(collection, image=photos[0], k=10)]

        got = server.post("/v1/search", {"text": "a box", "k": 2, "rerank": True, "rerank_model": "itm"}).json()
        expected = search(collection, text="a box", k=2, rerank=True, itm_dir=blip_itm.exported)
        assert [h["path"] for h in got["hits"]] == [h.path for h in expected]
        np.testing.assert_allclose([h["score"] for h in got["hits"]], [h.score for h in expected], atol=1e-4)
        assert all("itc" in h for h in got["hits"])

        for body, status in [({"text": "a", "image": b64(photos[0])}, 422), ({"k": 3}, 422),
                             ({"text": "a", "k": 0}, 422), ({"text": "a", "rerank": True}, 422),
                             ({"text": "a", "rerank": True, "rerank_model": "clip"}, 422),
                             ({"image": base64.b64encode(b"not an image").decode()}, 422),
                             ({"image": "%%%"}, 400)]:
            answer = server.post("/v1/search", body)
            assert answer.status_code == status, (body, answer.text)
            assert set(answer.json()["error"]) == {"type", "message", "index"}
    finally:
        code, err = server.stop()
    assert code == 0, err[-2000:]


def test_without_a_database_search_is_not_found(clip_with_attentions):
    server = Server([f"clip={clip_with_attentions.exported}"])
    try:
        answer = server.post("/v1/search", {"text": "a"})
        assert answer.status_code == 404 and answer.json()["error"]["type"] == "NoDatabase"
    finally:
        server.stop()
