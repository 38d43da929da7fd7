"""The real server (`clipblip serve` in a subprocess) over real HTTP on loopback: every route against the
in-process engine, dynamic batching under concurrency, per-item failures, every error status, the API
key, a full queue, and SIGTERM with requests in flight. Every loop is bounded in count and time."""

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipblip.engine import BlipEngine, ClipEngine

httpx = pytest.importorskip("httpx", reason="httpx (the `test` extra) drives the server")
pytest.importorskip("fastapi", reason="the `serve` extra (fastapi, uvicorn, prometheus-client) is not installed")

START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`clipblip serve ARGS` on a free loopback port, ready when /health says ok."""

    def __init__(self, folders: list[str], *options: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clipblip", "serve", *folders, "--port", str(self.port), "--threads", "1", *options],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.process.communicate()[1][-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError("server did not become ready")

    def post(self, route: str, body, **kwargs):
        return httpx.post(self.url + route, json=body, timeout=60, **kwargs)

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return self.process.returncode, err


def b64(path_or_image) -> str:
    if isinstance(path_or_image, Image.Image):
        buffer = io.BytesIO()
        path_or_image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()
    return base64.b64encode(Path(path_or_image).read_bytes()).decode()


@pytest.fixture(scope="module")
def server(clip_with_attentions, blip_caption, blip_vqa, blip_itm):
    running = Server([f"clip={clip_with_attentions.exported}", f"caption={blip_caption.exported}",
                      f"vqa={blip_vqa.exported}", f"itm={blip_itm.exported}"], "--batch-wait-ms", "20")
    yield running
    code, err = running.stop()
    assert code == 0, err[-2000:]


@pytest.fixture(scope="module")
def engines(clip_with_attentions, blip_caption, blip_vqa, blip_itm):
    return {"clip": ClipEngine.from_dir(clip_with_attentions.exported),
            "caption": BlipEngine.from_dir(blip_caption.exported), "vqa": BlipEngine.from_dir(blip_vqa.exported),
            "itm": BlipEngine.from_dir(blip_itm.exported)}


def test_every_route_answers_as_the_engine_does(server, engines, photos):
    images = [b64(p) for p in photos]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    models = {m["id"]: m for m in httpx.get(server.url + "/v1/models").json()["data"]}
    assert models["clip"]["family"] == "clip" and models["caption"]["tasks"] == ["caption"]

    texts = ["a cat", "", "猫 🐱"]
    got = server.post("/v1/embeddings", {"model": "clip", "input": texts}).json()
    assert got["object"] == "list" and [d["index"] for d in got["data"]] == [0, 1, 2]
    np.testing.assert_allclose([d["embedding"] for d in got["data"]], engines["clip"].embed_texts(texts), atol=1e-5)
    got = server.post("/v1/embeddings", {"model": "clip", "input": ["data:image/jpeg;base64," + images[0], images[1]],
                                         "modality": "image"}).json()
    np.testing.assert_allclose([d["embedding"] for d in got["data"]], engines["clip"].embed_images(photos), atol=1e-5)
    got = server.post("/v1/embeddings", {"model": "itm", "input": images, "modality": "image"}).json()
    np.testing.assert_allclose([d["embedding"] for d in got["data"]], engines["itm"].embed_images(photos), atol=1e-5)

    got = server.post("/v1/similarity", {"model": "clip", "images": images, "texts": texts}).json()
    np.testing.assert_allclose(got["similarity"], engines["clip"].similarity(photos, texts), atol=1e-5)
    got = server.post("/v1/classify", {"model": "clip", "images": images, "labels": ["cat", "dog", "box"]}).json()
    expected = engines["clip"].classify(photos, ["cat", "dog", "box"])
    for answer, ranked in zip(got["results"], expected):
        assert [a["label"] for a in answer] == [label for label, _ in ranked]
        np.testing.assert_allclose([a["probability"] for a in answer], [p for _, p in ranked], atol=1e-5)

    got = server.post("/v1/caption", {"model": "caption", "images": images, "prompt": "a picture of",
                                      "max_new_tokens": 6}).json()
    expected = engines["caption"].generate_captions(photos, "a picture of", 6)
    assert [r["token_ids"] for r in got["results"]] == [g.token_ids for g in expected]
    assert [r["text"] for r in got["results"]] == [g.text for g in expected]
    got = server.post("/v1/vqa", {"model": "vqa", "images": images, "question": "what is it?",
                                  "max_new_tokens": 4}).json()
    assert [r["token_ids"] for r in got["results"]] == [g.token_ids for g in
                                                        engines["vqa"].generate_answers(photos, "what is it?", 4)]
    got = server.post("/v1/match", {"model": "itm", "images": images, "texts": ["a", "b c"]}).json()
    scores = engines["itm"].match(photos, ["a", "b c"])
    np.testing.assert_allclose(got["itm"], scores.itm, atol=1e-5)
    np.testing.assert_allclose(got["itc"], scores.itc, atol=1e-5)
    assert httpx.get(server.url + "/docs").status_code == 200
    assert "/v1/caption" in httpx.get(server.url + "/openapi.json").json()["paths"]


def test_every_model_answer_says_whether_its_weights_are_random(server, photos):
    image = b64(photos[0])
    models = {m["id"]: m["random_weights"] for m in httpx.get(server.url + "/v1/models").json()["data"]}
    assert set(map(type, models.values())) == {bool}
    asked = [("/v1/embeddings", {"model": "clip", "input": ["a"]}),
             ("/v1/embeddings", {"model": "clip", "input": [image], "modality": "image"}),
             ("/v1/similarity", {"model": "clip", "images": [image], "texts": ["a"]}),
             ("/v1/classify", {"model": "clip", "images": [image], "labels": ["a", "b"]}),
             ("/v1/caption", {"model": "caption", "images": [image], "max_new_tokens": 2}),
             ("/v1/vqa", {"model": "vqa", "images": [image], "question": "what?", "max_new_tokens": 2}),
             ("/v1/match", {"model": "itm", "images": [image], "texts": ["a"]})]
    for route, body in asked:
        answer = server.post(route, body).json()
        assert answer["model"] == body["model"] and answer["random_weights"] is models[body["model"]], (route, answer)


def test_classify_requests_with_different_labels_share_engine_calls(server, engines, photos):
    variants = [Image.open(photos[i % 2]).rotate(11 * i) for i in range(16)]
    labels = [["cat", "dog"], ["a box", "a tree", "the sky"], ["cat", "dog", "bird"], ["red", "blue"]]
    bodies = [{"model": "clip", "images": [b64(variants[i])], "labels": labels[i % 4]} for i in range(16)]
    calls_before, items_before = batch_sizes(server, "clip")
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda body: server.post("/v1/classify", body), bodies, timeout=300))
    calls, items = batch_sizes(server, "clip")
    assert items - items_before == 16 and calls - calls_before < 16  # images of different label sets batched
    for i, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        (expected,) = engines["clip"].classify([variants[i]], labels[i % 4])
        got = answer.json()["results"][0]
        assert [r["label"] for r in got] == [label for label, _ in expected]
        np.testing.assert_allclose([r["probability"] for r in got], [p for _, p in expected], atol=1e-5)


def batch_sizes(server, model: str) -> tuple[float, float]:
    """(engine calls, items) of the model, from /metrics."""
    text = httpx.get(server.url + "/metrics").text
    count = sum_ = 0.0
    for line in text.splitlines():
        if line.startswith(f'clipblip_batch_size_count{{model="{model}"}}'):
            count = float(line.split()[-1])
        if line.startswith(f'clipblip_batch_size_sum{{model="{model}"}}'):
            sum_ = float(line.split()[-1])
    return count, sum_


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, photos):
    variants = [Image.open(photos[i % 2]).rotate(7 * i) for i in range(12)]
    bodies = [("/v1/embeddings", {"model": "clip", "input": [b64(variants[i % 12])], "modality": "image"})
              for i in range(36)]
    bodies += [("/v1/caption", {"model": "caption", "images": [b64(variants[i % 12])], "max_new_tokens": 5})
               for i in range(24)]
    alone = {i: server.post(*bodies[i]).json() for i in list(range(12)) + list(range(36, 48))}
    calls_before, items_before = batch_sizes(server, "clip")
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(lambda rb: server.post(*rb), bodies, timeout=300))
    assert all(a.status_code == 200 for a in answers)
    for i, answer in enumerate(answers):
        same = i % 12 if i < 36 else 36 + (i - 36) % 12
        if i < 36:
            np.testing.assert_allclose(answer.json()["data"][0]["embedding"], alone[same]["data"][0]["embedding"],
                                       atol=1e-5)
        else:
            assert answer.json()["results"] == alone[same]["results"]
    calls, items = batch_sizes(server, "clip")
    assert items - items_before == 36 and calls - calls_before < 36  # some engine calls held several requests


def test_one_bad_image_fails_only_its_own_request(server, photos, tmp_path):
    truncated = base64.b64encode(photos[0].read_bytes()[:400]).decode()
    good = b64(photos[1])
    bodies = [{"model": "caption", "images": [good, truncated] if i == 5 else [good], "max_new_tokens": 4}
              for i in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda body: server.post("/v1/caption", body), bodies, timeout=300))
    assert [a.status_code for a in answers] == [200] * 5 + [422] + [200] * 6
    error = answers[5].json()["error"]
    assert error["index"] == 1 and error["type"] == "ImageError"
    assert len({json.dumps(a.json()["results"]) for i, a in enumerate(answers) if i != 5}) == 1


def test_bad_requests_get_their_status_and_never_a_traceback(server):
    tiny = b64(Image.new("RGB", (8, 8), (9, 9, 9)))
    cases = [
        (httpx.post(server.url + "/v1/caption", content=b"{not json", headers={"content-type": "application/json"}),
         400, None),
        (server.post("/v1/caption", {"model": "caption", "images": ["not base64!"]}), 400, 0),
        (server.post("/v1/caption", {"model": "nobody", "images": [tiny]}), 404, None),
        (httpx.get(server.url + "/v1/nothing-here"), 404, None),
        (server.post("/v1/caption", {"model": "caption", "images": [tiny, base64.b64encode(b"text").decode()]}),
         422, 1),
        (server.post("/v1/caption", {"model": "caption", "images": []}), 422, None),
        (server.post("/v1/caption", {"model": "caption", "images": [3]}), 422, 0),
        (server.post("/v1/caption", {"model": "caption", "images": [tiny], "max_new_tokens": 0}), 422, None),
        (server.post("/v1/caption", {"model": "caption", "images": [tiny], "max_new_tokens": 100000}), 422, None),
        (server.post("/v1/caption", {"model": "clip", "images": [tiny]}), 422, None),
        (server.post("/v1/classify", {"model": "itm", "images": [tiny], "labels": ["a"]}), 422, None),
        (server.post("/v1/embeddings", {"model": "caption", "input": ["a"]}), 422, None),
        (server.post("/v1/caption", {"model": "caption", "images": [tiny], "extra": 1}), 422, None),
        (server.post("/v1/caption", {"model": "caption", "images": [tiny], "num_beams": 100000}), 422, None),
        (httpx.post(server.url + "/v1/embeddings", data={"model": "clip", "input": "a"}), 400, None),  # a form
        (httpx.post(server.url + "/v1/embeddings", content=b"[" * 100_000 + b"]" * 100_000,
                    headers={"content-type": "application/json"}), 400, None),
        (server.post("/v1/classify", {"model": "clip", "images": [tiny], "labels": ["a"], "template": "{} {}"}),
         422, None),
    ]
    for response, status, index in cases:
        body = response.json()
        assert response.status_code == status, body
        assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "index"}
        assert body["error"]["index"] == index, body
        assert "Traceback" not in response.text
    assert httpx.get(server.url + "/health").status_code == 200  # still up
    messages = [response.json()["error"]["message"] for response, _, _ in cases]
    assert "at most 16 beams" in messages[-4]  # not the memory of 100,000 beams, which took the server down
    assert "Content-Type: application/json (it came as application/x-www-form-urlencoded)" in messages[-3]
    assert "does not do caption; it answers /v1/embeddings, /v1/similarity, /v1/classify" in messages[9]


def test_api_key_limits_queue_and_size(clip_with_attentions, blip_caption):
    server = Server([f"clip={clip_with_attentions.exported}", f"caption={blip_caption.exported}"],
                    "--max-request-bytes", "100000", "--max-image-pixels", "10000", "--max-queue", "1",
                    "--batch-wait-ms", "400", env={"CLIPBLIP_API_KEY": "s3cret"})
    try:
        small = b64(Image.new("RGB", (16, 16), (200, 10, 10)))
        body = {"model": "clip", "input": [small], "modality": "image"}
        assert httpx.get(server.url + "/health").status_code == 200  # open to load balancers
        assert server.post("/v1/embeddings", body).status_code == 401
        assert server.post("/v1/embeddings", body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        key = {"Authorization": "Bearer s3cret"}
        assert server.post("/v1/embeddings", body, headers=key).status_code == 200
        big = server.post("/v1/embeddings", {**body, "input": ["A" * 200_000]}, headers=key)
        assert big.status_code == 413 and big.json()["error"]["type"] == "RequestTooLarge"
        sent = json.dumps({**body, "input": ["A" * 200_000]}).encode()
        chunked = httpx.post(server.url + "/v1/embeddings", content=iter([sent[:50_000], sent[50_000:]]),
                             headers={**key, "content-type": "application/json"})  # no Content-Length
        assert chunked.status_code == 413 and chunked.json()["error"]["type"] == "RequestTooLarge", chunked.text
        over = server.post("/v1/embeddings", {**body, "input": [small, b64(Image.new("RGB", (200, 100)))]}, headers=key)
        assert over.status_code == 413 and over.json()["error"]["index"] == 1
        time.sleep(0.5)  # idle again: the first request waits out the 400 ms batch window, holding the one-item queue
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(lambda _: server.post("/v1/embeddings", body, headers=key), range(4), timeout=120))
        statuses = sorted(a.status_code for a in answers)
        assert statuses[0] == 200 and 503 in statuses
        full = next(a for a in answers if a.status_code == 503)
        assert full.headers["retry-after"] == "1" and full.json()["error"]["type"] == "QueueFull"
    finally:
        code, err = server.stop()
    assert code == 0, err[-2000:]


def test_sigterm_answers_every_accepted_request(blip_caption, photos):
    server = Server([f"caption={blip_caption.exported}"], "--batch-wait-ms", "1500")
    body = {"model": "caption", "images": [b64(photos[0])], "max_new_tokens": 8}
    with ThreadPoolExecutor(max_workers=8) as pool:
        flying = [pool.submit(server.post, "/v1/caption", body) for _ in range(8)]
        time.sleep(0.5)  # the requests are accepted and wait in a 1.5 s batch window
        server.process.send_signal(signal.SIGTERM)
        answers = [f.result(timeout=120) for f in flying]
    try:  # the one SIGTERM must be enough: stop() would send a second one to a server still draining
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    code, err = server.stop()
    assert [a.status_code for a in answers] == [200] * 8 and code == 0, err[-2000:]
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/health", timeout=2)


def test_decoding_options_pass_through_and_batch_only_with_their_like(server, engines, photos):
    images = [b64(p) for p in photos]
    bodies = [{"model": "caption", "images": images, "max_new_tokens": 6, "num_beams": 3, "length_penalty": 2.0},
              {"model": "caption", "images": images, "max_new_tokens": 6},
              {"model": "caption", "images": images, "max_new_tokens": 6, "do_sample": True, "seed": 3,
               "temperature": 1.5, "min_p": 0.2}]
    with ThreadPoolExecutor(max_workers=3) as pool:  # sent together: each must still get its own decoding
        answers = list(pool.map(lambda body: server.post("/v1/caption", body).json(), bodies, timeout=120))
    for body, answer in zip(bodies, answers):
        options = {k: v for k, v in body.items() if k not in ("model", "images")}
        expected = engines["caption"].generate_captions(photos, **options)
        assert [r["token_ids"] for r in answer["results"]] == [g.token_ids for g in expected]
    assert all("score" in r for r in answers[0]["results"]) and "score" not in answers[1]["results"][0]
    got = server.post("/v1/vqa", {"model": "vqa", "images": images, "question": "what?", "num_beams": 2,
                                  "max_new_tokens": 4}).json()
    expected = engines["vqa"].generate_answers(photos, "what?", 4, num_beams=2)
    assert [r["token_ids"] for r in got["results"]] == [g.token_ids for g in expected]
    for bad, name in [({"num_beams": 0}, "num_beams"), ({"top_p": 1.5, "do_sample": True}, "top_p"),
                      ({"early_stopping": "maybe"}, "early_stopping")]:
        answer = server.post("/v1/caption", {"model": "caption", "images": images[:1], **bad})
        assert answer.status_code == 422 and name in answer.json()["error"]["message"]


@pytest.mark.parametrize("where, says", [
    ("busy", "port {port} on 127.0.0.1 is in use; choose another with --port"),
    ("--host 10.9.9.9", "--host 10.9.9.9: not an address of this machine"),
])
def test_an_address_that_cannot_be_listened_on_is_one_line_before_any_loading(clip_with_attentions, where, says):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = ["--port", str(port)] if where == "busy" else [*where.split(), "--port", str(free_port())]
        result = subprocess.run([sys.executable, "-m", "clipblip", "serve", str(clip_with_attentions.exported),
                                 *options], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == "", result  # UsageError (docs/errors.md)
    assert len(result.stderr.splitlines()) == 1, result.stderr  # no "serving on", no uvicorn line, no traceback
    assert result.stderr.startswith(f"clipblip: error: {says.format(port=port)}"), result.stderr
