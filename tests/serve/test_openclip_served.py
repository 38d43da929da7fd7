"""`clipblip serve` with the tiny OpenCLIP folders of every architecture, and a search database indexed with one of
them: the page, the model list, embeddings, classification and search answer as the engines do."""

import httpx
import numpy as np
import pytest
from PIL import Image

from clipblip.engine import OpenClipEngine
from clipblip.search import index_paths

pytest.importorskip("fastapi", reason="the `serve` extra is not installed")
pytest.importorskip("open_clip", reason="open_clip and timm (the `open_clip` extra) are not installed")

from tests.openclip_helpers import architectures  # noqa: E402
from tests.serve.test_server import Server, b64  # noqa: E402

ARCHS = list(architectures())


@pytest.fixture(scope="module")
def served(openclip, photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("openclip-photos")
    for photo in photos:
        (root / photo.name).write_bytes(photo.read_bytes())
    Image.new("RGB", (40, 30), (200, 30, 30)).save(root / "red.png")
    db = root.parent / "openclip-photos.db"
    index_paths(db, openclip("PE-Core-B-16").exported, [root])
    server = Server([f"{arch.lower()}={openclip(arch).exported}" for arch in ARCHS], "--db", str(db))
    yield server, root
    code, err = server.stop()
    assert code == 0, err[-2000:]


def test_the_page_and_every_model_answer_as_the_engines_do(served, openclip, photos):
    server, root = served
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    models = {m["id"]: m for m in httpx.get(server.url + "/v1/models").json()["data"]}
    assert {models[arch.lower()]["family"] for arch in ARCHS} == {"open_clip"}
    images = [b64(p) for p in photos]
    for arch in ARCHS:
        engine = OpenClipEngine.from_dir(openclip(arch).exported, provider="cpu")
        name = arch.lower()
        got = server.post("/v1/embeddings", {"model": name, "input": ["a cat", "猫 🐱 &amp;"]}).json()
        np.testing.assert_allclose([d["embedding"] for d in got["data"]], engine.embed_texts(["a cat", "猫 🐱 &amp;"]),
                                   atol=1e-5)
        got = server.post("/v1/classify", {"model": name, "images": images, "labels": ["cat", "dog"]}).json()
        for answer, ranked in zip(got["results"], engine.classify(photos, ["cat", "dog"])):
            assert [a["label"] for a in answer] == [label for label, _ in ranked], arch
            np.testing.assert_allclose([a["probability"] for a in answer], [p for _, p in ranked], atol=1e-5)

    hits = server.post("/v1/search", {"text": "a red square", "k": 3}).json()["hits"]
    assert len(hits) == 3
    hits = server.post("/v1/search", {"image": b64(root / "red.png"), "k": 1}).json()["hits"]
    assert hits[0]["score"] == pytest.approx(1, abs=1e-5)
