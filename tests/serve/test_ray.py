"""`clipblip serve --ray`: the same API on Ray Serve, on a local Ray cluster started by the server, over
real HTTP on loopback: answers equal the in-process engine's, concurrent requests are batched by
`@serve.batch`, and a killed replica is replaced by Ray while every request sent after it died is
answered. Also the config file for `serve deploy` / KubeRay, and that `import clipblip.serve` stays
free of ray. Every loop is bounded in count and time."""

import base64
import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

START_TIMEOUT_S = 300  # a local Ray cluster, then five replicas loading engines, on a small machine
STOP_TIMEOUT_S = 120


def test_importing_clipblip_serve_does_not_import_ray():
    code = ("import sys, clipblip.serve, clipblip.cli.serve\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'yaml'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == ""


# --- the config file (no cluster) --------------------------------------------------------------------

def test_emit_config_writes_a_ray_serve_config_and_replaces_only_its_own(tmp_path, capsys):
    pytest.importorskip("ray.serve", reason="the `ray` extra is not installed")
    yaml = pytest.importorskip("yaml")
    from clipblip.errors import OutputError, OutputExistsError, UsageError
    from clipblip.serve import ray_app

    folders = {"clip": tmp_path / "models" / "clip", "cap": tmp_path / "models" / "cap"}  # on the nodes, not here
    out = tmp_path / "serve.yaml"
    ray_app.emit_config(folders, out, host="0.0.0.0", port=8123, provider="cpu", threads=2, max_batch=8,
                        batch_wait_ms=7.5, max_queue=64, max_request_bytes=1 << 20, key=None, replicas=3,
                        max_image_pixels=1000)
    assert "must exist at that path on every Ray node" in capsys.readouterr().err
    text = out.read_text()
    assert text.startswith("# written by clipblip ")
    config = yaml.safe_load(text)
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8123}
    (app,) = config["applications"]
    assert app["import_path"] == "clipblip.serve.ray_app:build_app" and app["route_prefix"] == "/"
    assert app["args"]["models"] == {name: str(folder) for name, folder in folders.items()}
    assert {k: app["args"][k] for k in ("provider", "threads", "max_batch", "batch_wait_ms", "max_queue",
                                        "max_request_bytes", "max_image_pixels", "replicas")} == dict(
        provider="cpu", threads=2, max_batch=8, batch_wait_ms=7.5, max_queue=64, max_request_bytes=1 << 20,
        max_image_pixels=1000, replicas=3)
    assert app["args"]["require_api_key"] is False
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {"clip", "cap", "_ingress"}
    assert deployments["cap"]["num_replicas"] == 3 and deployments["cap"]["ray_actor_options"] == {"num_cpus": 2}
    assert deployments["cap"]["max_ongoing_requests"] >= 8  # room for a full batch
    # the builder the config names accepts its args (building needs no cluster)
    built = ray_app.build_app(app["args"])
    assert type(built).__name__ == "Application"

    # an existing file: refused without --force; replaced with it, since clipblip wrote it
    with pytest.raises(OutputExistsError):
        ray_app.emit_config(folders, out, key="secret")
    ray_app.emit_config(folders, out, force=True, key="secret")
    text = out.read_text()
    assert "secret" not in text and "CLIPBLIP_API_KEY" in text
    assert yaml.safe_load(text)["applications"][0]["args"]["require_api_key"] is True
    assert yaml.safe_load(text)["applications"][0]["args"]["replicas"] == 1

    # a YAML file clipblip did not write is never replaced, even with --force
    mine = tmp_path / "mine.yaml"
    mine.write_text("# my own config\nproxy_location: EveryNode\n")
    with pytest.raises(OutputError, match="not written by clipblip"):
        ray_app.emit_config(folders, mine, force=True)
    assert mine.read_text() == "# my own config\nproxy_location: EveryNode\n"
    # a folder that exists here but is not a model folder is refused before anything is written
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(Exception) as refused:
        ray_app.emit_config({"x": tmp_path / "notamodel"}, tmp_path / "other.yaml")
    assert not (tmp_path / "other.yaml").exists() and not isinstance(refused.value, OutputError)
    with pytest.raises(UsageError, match="replicas"):
        ray_app.emit_config(folders, tmp_path / "bad.yaml", replicas=0)


# --- a running Ray Serve application --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_processes(sid: int) -> dict[int, str]:
    """{pid: command line} of the processes in session ``sid`` (the server and the Ray cluster it started)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, ValueError, IndexError):
            continue
    return found


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class RayServer:
    """`clipblip serve DIRS --ray ...` in its own session on a free loopback port; ready when it says so
    and /health answers."""

    def __init__(self, folders: list[str], *options: str):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.err_path = Path(folders[0]).parent / "server.err"
        self.err = open(self.err_path, "w")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # always a local cluster
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # its token: Ray writes ~/.ray/auth_token where it finds none
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clipblip", "serve", *folders, "--ray", "--port", str(self.port), "--threads", "1",
             *options], stdout=subprocess.DEVNULL, stderr=self.err, text=True, env=env, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log()[-3000:]}")
            if "serving on" in self.log():
                try:
                    if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"server did not become ready: {self.log()[-3000:]}")

    def log(self) -> str:
        return self.err_path.read_text(errors="replace")

    def replicas(self, deployment: str) -> list[int]:
        title = f"ray::ServeReplica:clipblip:{deployment}"
        return sorted(pid for pid, command in session_processes(self.process.pid).items()
                      if command.split(" ")[0] == title)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        finally:
            time.sleep(1)
            for pid in session_processes(self.process.pid):  # whatever of its cluster outlived it: ours
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self.err.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    pytest.importorskip("ray.serve", reason="the `ray` extra is not installed")
    pytest.importorskip("torch", reason="the `export` extra exports the tiny models")
    from clipblip.export import export_model

    root = tmp_path_factory.mktemp("ray-models")
    export_model("random:clip-tiny", root / "clip")
    export_model("random:blip-tiny", root / "cap", task="caption")
    return root


@pytest.mark.slow
def test_ray_serve_batches_answers_as_the_engine_does_and_survives_a_killed_replica(folders):
    httpx = pytest.importorskip("httpx")
    from clipblip.engine import BlipEngine, ClipEngine

    rng = np.random.default_rng(7)
    images = [png(Image.new("RGB", (40 + i, 30), (40 * i, 200 - 30 * i, 90))) for i in range(4)]
    images += [png(Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8))) for _ in range(4)]
    texts = [f"a photo of thing number {i}" for i in range(8)]
    clip = ClipEngine.from_dir(folders / "clip", threads=1)
    cap = BlipEngine.from_dir(folders / "cap", threads=1)
    image_rows, text_rows = clip.embed_images(images), clip.embed_texts(texts)
    captions = [cap.generate_captions([image], None, 5)[0].token_ids for image in images]

    timings = {}
    started = time.monotonic()
    server = RayServer([str(folders / "clip"), str(folders / "cap")], "--replicas", "2", "--batch-wait-ms", "20")
    timings["start"] = time.monotonic() - started
    try:
        assert len(server.replicas("clip")) == 2 and len(server.replicas("cap")) == 2
        models = {m["id"]: m for m in httpx.get(server.url + "/v1/models", timeout=30).json()["data"]}
        assert models["clip"]["ops"] == ["embed_image", "embed_text"] and models["cap"]["ops"] == ["caption"]

        def ask(i: int):
            """Request ``i``: (kind, index, response)."""
            j = i % 8
            if i % 3 == 0:
                return "text", j, httpx.post(server.url + "/v1/embeddings", json={"model": "clip", "input": [texts[j]]},
                                             timeout=120)
            if i % 3 == 1:
                body = {"model": "clip", "input": [base64.b64encode(images[j]).decode()], "modality": "image"}
                return "image", j, httpx.post(server.url + "/v1/embeddings", json=body, timeout=120)
            body = {"model": "cap", "images": [base64.b64encode(images[j]).decode()], "max_new_tokens": 5}
            return "caption", j, httpx.post(server.url + "/v1/caption", json=body, timeout=120)

        def check(kind: str, j: int, response) -> None:
            assert response.status_code == 200, response.text
            if kind == "caption":
                assert response.json()["results"][0]["token_ids"] == captions[j]
            else:
                expected = text_rows[j] if kind == "text" else image_rows[j]
                np.testing.assert_allclose(response.json()["data"][0]["embedding"], expected, atol=1e-5)

        # concurrent requests: every answer is the engine's, and the replicas batched some of them
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=24) as pool:
            answers = list(pool.map(ask, range(96), timeout=300))
        timings["96 concurrent requests"] = time.monotonic() - started
        for answer in answers:
            check(*answer)
        metrics = httpx.get(server.url + "/metrics", timeout=30).text
        batches_over_one = 0
        for model in ("clip", "cap"):
            count = ones = 0.0
            for line in metrics.splitlines():
                if line.startswith(f'clipblip_batch_size_count{{model="{model}"}}'):
                    count = float(line.split()[-1])
                if line.startswith("clipblip_batch_size_bucket{") and 'le="1.0"' in line and f'model="{model}"' in line:
                    ones = float(line.split()[-1])
            assert count >= 1, metrics
            batches_over_one += count - ones
        assert batches_over_one > 0, metrics

        # a replica dies (SIGKILL, mid-run): Ray replaces it; every request sent after it died is answered
        victim = server.replicas("cap")[0]
        results: list[tuple[float, str, int, object]] = []
        killed_at: list[float] = []
        stop = threading.Event()

        def load(worker: int) -> None:
            for n in range(200):  # bounded in count, and in time by the main thread's stop
                if stop.is_set():
                    return
                sent = time.monotonic()
                kind, j, response = ask(2 + 3 * (worker * 200 + n))  # captions
                results.append((sent, kind, j, response))

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=6) as pool:
            workers = [pool.submit(load, w) for w in range(6)]
            time.sleep(1.5)
            os.kill(victim, signal.SIGKILL)
            killed_at.append(time.monotonic())
            time.sleep(8)
            stop.set()
            for worker in workers:
                worker.result(timeout=180)
        timings["kill run"] = time.monotonic() - started
        after = [r for r in results if r[0] > killed_at[0]]
        before = [r for r in results if r[0] <= killed_at[0]]
        codes_before = sorted({r[3].status_code for r in before})
        print(f"\nreplica kill: {len(before)} requests sent before it (statuses {codes_before}), "
              f"{len(after)} after it, {sum(r[3].status_code == 200 for r in after)} of those answered 200")
        assert len(after) >= 10
        for _, kind, j, response in after:
            check(kind, j, response)
        assert set(codes_before) <= {200, 503}  # in flight when it died: sent again to a live replica, or 503

        deadline = time.monotonic() + 120  # Ray starts a replacement
        while time.monotonic() < deadline and (victim in server.replicas("cap") or len(server.replicas("cap")) < 2):
            time.sleep(0.5)
        replicas = server.replicas("cap")
        assert victim not in replicas and len(replicas) == 2, replicas
        check(*ask(2))
    finally:
        started = time.monotonic()
        code = server.stop()
        timings["stop"] = time.monotonic() - started
        print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    assert code == 0, server.log()[-3000:]
    assert "server stopped" in server.log()
