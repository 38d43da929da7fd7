"""Video hits on the page of `clipblip serve --db DB` (headless Chromium): a segment's frame as its thumbnail, its
times, and the video playing from the segment's start; the video served by id with range requests, behind the key
(a link signed with it, since a <video> element sends no header); only indexed rows, no path from a request."""

import re
import time

import pytest

av = pytest.importorskip("av", reason="PyAV (the `video` extra) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (the `test` extra) drives the server")
pytest.importorskip("fastapi", reason="the `serve` extra is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the `test` extra) drives Chromium")

from clipblip.search import index_paths  # noqa: E402
from tests.helpers import make_videos_module  # noqa: E402
from tests.serve.test_server import Server  # noqa: E402

expect = sync_api.expect
KEY = "video-page-key"
make_videos = make_videos_module()


@pytest.fixture(scope="module")
def library(tmp_path_factory, clip_with_attentions):
    root = tmp_path_factory.mktemp("video-page")
    (root / "media").mkdir()
    clip = make_videos.write_video(root / "media" / "scenes.webm", codec="libvpx-vp9", width=96, height=64,
                                   options={"deadline": "realtime", "cpu-used": "8"})
    db = root / "media.db"
    index_paths(db, clip_with_attentions.exported, [root / "media"], fold_similarity=0.9999)
    return clip, db


@pytest.fixture(scope="module")
def server(clip_with_attentions, library):
    running = Server([f"clip={clip_with_attentions.exported}"], "--db", str(library[1]), "--api-key", KEY)
    yield running
    code, err = running.stop()
    assert code == 0, err[-2000:]


def keyed(**headers):
    return {"Authorization": f"Bearer {KEY}", **headers}


def segment_hits(server):
    answer = httpx.post(server.url + "/v1/search", json={"text": "a red square", "k": 10}, headers=keyed(), timeout=60)
    assert answer.status_code == 200, answer.text
    return [h for h in answer.json()["hits"] if "start" in h]


def test_videos_are_served_by_id_with_ranges_behind_the_key(server, library):
    hits = segment_hits(server)
    assert sorted((h["start"], round(h["end"])) for h in hits) == [(0, 4), (4, 8), (8, 12)]
    video_id = hits[0]["id"]
    size = library[0].stat().st_size
    assert httpx.get(f"{server.url}/v1/videos/{video_id}").status_code == 401  # no key, no link
    assert httpx.get(f"{server.url}/v1/videos/{video_id}/link").status_code == 401
    link = httpx.get(f"{server.url}/v1/videos/{video_id}/link", headers=keyed()).json()
    assert link["url"].startswith(f"/v1/videos/{video_id}?expires=") and KEY not in link["url"]
    part = httpx.get(server.url + link["url"], headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == library[0].read_bytes()[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{size}" and part.headers["content-type"] == "video/webm"
    beyond = httpx.get(server.url + link["url"], headers={"Range": f"bytes={size + 10}-{size + 20}"})
    assert beyond.status_code == 416
    whole = httpx.get(f"{server.url}/v1/videos/{video_id}", headers=keyed())
    assert whole.status_code == 200 and whole.content == library[0].read_bytes()
    # a signature for another video, a changed expiry, or an expired link: refused
    other = "0" * 64
    forged = link["url"].replace(video_id, other)
    assert httpx.get(server.url + forged).status_code == 401
    stretched = re.sub(r"expires=\d+", f"expires={link['expires'] + 3600}", link["url"])
    assert httpx.get(server.url + stretched).status_code == 401
    expired = re.sub(r"expires=\d+", f"expires={int(time.time()) - 10}", link["url"])
    assert httpx.get(server.url + expired).status_code == 401
    # only rows: an id that is not one, or a path, is never read
    assert httpx.get(f"{server.url}/v1/videos/{other}", headers=keyed()).status_code == 404
    assert httpx.get(f"{server.url}/v1/videos/..%2F..%2Fetc%2Fpasswd", headers=keyed()).status_code == 404
    frame = httpx.get(f"{server.url}/v1/photos/{video_id}/thumbnail", params={"at": hits[0]["frame"]},
                      headers=keyed())
    assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
    assert httpx.get(f"{server.url}/v1/photos/{video_id}/thumbnail", params={"at": 1.234},
                     headers=keyed()).status_code == 404  # not a segment's frame: never decoded on request


def test_the_page_shows_a_video_hit_and_plays_it_from_the_segment(chromium, server):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                                                             "--autoplay-policy=no-user-gesture-required"])
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server.url + "/")
            page.locator("#key").fill(KEY)
            page.locator("#key-form button").click()
            expect(page.locator("#status")).to_contain_text("serving")
            page.locator("#query").fill("a red square")
            page.locator("#query").press("Enter")
            figure = page.locator("figure.video", has_text="@ 00:04–00:08")
            expect(figure).to_have_count(1)
            expect(figure.locator("img")).to_have_attribute("src", re.compile("^blob:"))  # its frame
            figure.locator("button", has_text="look").click()
            player = page.locator("#look-video")
            expect(player).to_be_visible()
            page.wait_for_function("() => document.getElementById('look-video').readyState >= 1", timeout=20000)
            page.wait_for_function("() => document.getElementById('look-video').currentTime >= 4", timeout=20000)
            assert page.evaluate("document.getElementById('look-video').currentTime") < 8.5
            assert "signature=" in page.evaluate("document.getElementById('look-video').src")
            assert not errors, errors
        finally:
            browser.close()
