"""The photo routes the page shows results with: only rows of the database are served (by id, never by a path
from the request), with the right content types, cached thumbnails, and a clear refusal for everything else."""

import io
import os
import shutil

import pytest
from PIL import Image

from clipblip.search import index_paths
from clipblip.search.store import Store

pytest.importorskip("fastapi", reason="the `serve` extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from clipblip.serve import LocalBackend, Metrics, Settings, create_app  # noqa: E402
from clipblip.serve.photos import Photos  # noqa: E402
from clipblip.serve.search import SearchService  # noqa: E402

KEY = "photos-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def collection(tmp_path, clip_with_attentions, photos):
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (900, 300), (200, 30, 30)).save(root / "wide.png")
    shutil.copy(photos[0], root / photos[0].name)
    Image.new("RGB", (40, 40), (30, 200, 30)).save(root / "gone.png")
    Image.new("RGB", (40, 40), (30, 30, 200)).save(root / "changed.png")
    db = tmp_path / "photos.db"
    index_paths(db, clip_with_attentions.exported, [root])
    with Store.open(db) as store:
        ids = {os.path.basename(e.path): e.sha256 for e in store.entries().values()}
    (root / "gone.png").unlink()
    (root / "changed.png").write_bytes(b"now something else entirely")
    return root, db, ids


@pytest.fixture
def client(collection, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPBLIP_CACHE", str(tmp_path / "cache"))
    search = SearchService(collection[1], {}, max_image_pixels=10_000_000)
    app = create_app(LocalBackend({}, max_batch=8, batch_wait_ms=1, max_queue=8, metrics=Metrics()),
                     Settings(api_key=KEY), search=search)
    with TestClient(app) as client:
        yield client


def test_thumbnails_and_originals_of_rows_only(client, collection, photos, tmp_path):
    root, _, ids = collection
    answer = client.get(f"/v1/photos/{ids['wide.png']}/thumbnail", headers=AUTH)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(answer.content)).size == (256, 85)
    assert "private" in answer.headers["cache-control"] and answer.headers["x-content-type-options"] == "nosniff"
    cached = list((tmp_path / "cache" / "thumbnails" / "256").rglob("*.jpg"))
    assert [p.name for p in cached] == [ids["wide.png"] + ".jpg"]
    assert Image.open(io.BytesIO(client.get(f"/v1/photos/{ids['wide.png']}/thumbnail?size=128",
                                            headers=AUTH).content)).size == (128, 43)

    answer = client.get(f"/v1/photos/{ids[photos[0].name]}", headers=AUTH)
    assert answer.status_code == 200 and answer.content == photos[0].read_bytes()
    assert answer.headers["content-type"] == Image.MIME[Image.open(photos[0]).format]


@pytest.mark.parametrize("route, status, says", [
    ("/v1/photos/{wide}/thumbnail?size=300", 422, "thumbnails are 128, 256, 512"),
    ("/v1/photos/{wide}/thumbnail?size=x", 422, "size"),
    ("/v1/photos/{missing}/thumbnail", 404, "not in the search database"),
    ("/v1/photos/{missing}", 404, "not in the search database"),
    ("/v1/photos/{gone}/thumbnail", 404, "no longer on disk"),
    ("/v1/photos/{gone}", 404, "no longer on disk"),
    ("/v1/photos/{changed}/thumbnail", 409, "changed after it was indexed"),
    ("/v1/photos/{changed}", 409, "changed after it was indexed"),
    ("/v1/photos/..%2F..%2Fetc%2Fpasswd", 404, "Not Found"),
    ("/v1/photos/%2Fetc%2Fpasswd/thumbnail", 404, "Not Found"),
    ("/v1/photos/{wide_upper}/thumbnail", 404, "not a photo id"),
    ("/v1/photos/../../etc/passwd", 404, ""),
    ("/page/..%2F__init__.py", 404, "Not Found"),
    ("/page/photos.py", 404, "no such file of the page"),
])
def test_anything_but_a_row_is_refused(client, collection, route, status, says):
    ids = collection[2]
    route = route.format(wide=ids["wide.png"], gone=ids["gone.png"], changed=ids["changed.png"], missing="0" * 64,
                         wide_upper=ids["wide.png"].upper())
    answer = client.get(route, headers=AUTH)
    assert answer.status_code == status, answer.text
    assert set(answer.json()["error"]) == {"type", "message", "index"} and says in answer.json()["error"]["message"]
    assert "root:" not in answer.text  # never a file's content


def test_every_photo_route_needs_the_key(client, collection):
    photo = collection[2]["wide.png"]
    for route in (f"/v1/photos/{photo}/thumbnail", f"/v1/photos/{photo}", "/v1/database"):
        assert client.get(route).status_code == 401
        assert client.get(route, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/v1/database", headers=AUTH).json()["count"] == 4


def test_a_thumbnail_refuses_a_decompression_bomb_and_a_file_that_is_not_an_image(collection, tmp_path):
    root, db, ids = collection
    photos = Photos(db, max_pixels=1000, cache_dir=tmp_path / "thumbs")
    with pytest.raises(Exception, match="over the limit of 1,000"):
        photos.thumbnail(ids["wide.png"], 256)
    assert not (tmp_path / "thumbs").exists()  # nothing cached for a refusal
    photos = Photos(db, max_pixels=None, cache_dir=tmp_path / "thumbs")
    assert photos.get(ids["wide.png"]).name == "wide.png"
    st = (root / "wide.png").stat()
    (root / "wide.png").write_bytes(b"x" * st.st_size)  # not an image, with the size and time it was indexed with
    os.utime(root / "wide.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(Exception, match="wide.png: not a readable image"):
        photos.thumbnail(ids["wide.png"], 256)
    os.utime(root / "wide.png", ns=(0, 0))  # another time: refused until indexed again
    with pytest.raises(Exception, match="changed after it was indexed"):
        photos.thumbnail(ids["wide.png"], 256)
