"""Ray as its users start it: `ray start --head` on loopback, with token authentication on (Ray 2.60 turns it
on when it finds a token, here in ~/.ray/auth_token) and off (RAY_AUTH_MODE=disabled); then `clipblip serve
--ray`, `clipblip index --ray --ray-address` and `serve deploy` of the `--emit-config` file against it, each a
process of its own with the environment a user has. Drivers without the cluster's token get one line.

The slow tests use a real cluster: HOME is a folder of the test's (a test token never reaches the real
~/.ray/auth_token), Ray's files are under a temporary folder, and the cluster is stopped through its own
`ray start --block` process and then every process of its session (never `ray stop`, which stops every
Ray cluster of this user on the machine). The fast tests check how clipblip.raycluster decides, against a
stand-in GCS that answers GetClusterId as the real one was measured to (OK, or UNAUTHENTICATED with Ray's
text), and against an address where nothing listens."""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipblip.errors import EXIT_CODES, RayClusterError, UsageError
from tests.helpers import run_cli
from tests.search.test_search import BROKEN, VALID, collection  # noqa: F401  (the fixture)

pytest.importorskip("ray", reason="the `ray` extra is not installed")

ROOT = Path(__file__).resolve().parent.parent  # the checkout under test: the cluster's workers import it
START_TIMEOUT_S = 240
TOKEN_FILE = Path(".ray") / "auth_token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_environment(home: Path) -> dict[str, str]:
    """This process's environment without any Ray setting (a local ray.init here sets RAY_AUTH_MODE), with
    ``home`` as HOME and this checkout first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return env


def session_processes(sid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[3]) == sid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


class RayHead:
    """`ray start --head --block` on 127.0.0.1, in a session of its own; ``auth``: token authentication,
    turned on as Ray turns it on for a user who has a token in ~/.ray/auth_token."""

    def __init__(self, auth: bool):
        self.auth = auth
        self.root = Path(tempfile.mkdtemp(prefix="cbray-"))  # short: Ray's socket paths live under it
        self.home = self.root / "home"  # HOME of the cluster, and of the drivers that have its token
        self.token = secrets.token_hex(32) if auth else None
        (self.home / TOKEN_FILE.parent).mkdir(parents=True)
        if auth:
            (self.home / TOKEN_FILE).write_text(self.token)
        self.port, self.dashboard_port, self.http_port = free_port(), free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = clean_environment(self.home)
        cluster_env = {**self.env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # SIGTERM: stop now
        if not auth:
            cluster_env["RAY_AUTH_MODE"] = "disabled"
        command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                   "--node-ip-address", "127.0.0.1", "--port", str(self.port), "--num-cpus", "3",
                   "--temp-dir", str(self.root / "ray"), "--include-dashboard", "true", "--dashboard-host",
                   "127.0.0.1", "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port",
                   str(free_port()), "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats"]
        self.log_path = self.root / "ray-start.log"
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(command, env=cluster_env, stdout=self.log_file, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ray runtime started" not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log()
                self.stop()
                raise AssertionError(f"ray start did not start: {log[-3000:]}")
            time.sleep(0.5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + 10
            while session_processes(self.process.pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            for pid in session_processes(self.process.pid):  # whatever of this cluster outlived it
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
        finally:
            self.log_file.close()
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module", params=["token", "disabled"])
def head(request):
    pytest.importorskip("ray.serve", reason="the `ray` extra is not installed")
    cluster = RayHead(auth=request.param == "token")
    try:
        # the premise: Ray says so when it turns authentication on (with RAY_AUTH_MODE set, it says nothing)
        assert ("Token authentication is enabled" in cluster.log()) == cluster.auth, cluster.log()[-3000:]
        yield cluster
    finally:
        cluster.stop()
    assert not session_processes(cluster.process.pid)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    pytest.importorskip("torch", reason="the `export` extra exports the tiny model")
    from clipblip.export import export_model

    folder = tmp_path_factory.mktemp("ray-cluster-models") / "clip"
    export_model("random:clip-tiny", folder)
    return folder


def clipblip(env: dict[str, str], *args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipblip", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def wait_for_http(url: str, process: subprocess.Popen | None = None, log=lambda: "") -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}: {log()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer: {log()[-3000:]}")


def assert_answers_as_the_engine(url: str, clip: Path) -> None:
    import httpx

    from clipblip.engine import ClipEngine

    engine = ClipEngine.from_dir(clip, threads=1)
    text = "a photo of a red square"
    image = png(Image.new("RGB", (40, 30), (200, 30, 30)))
    answer = httpx.post(url + "/v1/embeddings", json={"model": "clip", "input": [text]}, timeout=120)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["data"][0]["embedding"], engine.embed_texts([text])[0], atol=1e-5)
    body = {"model": "clip", "input": [base64.b64encode(image).decode()], "modality": "image"}
    answer = httpx.post(url + "/v1/embeddings", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["data"][0]["embedding"], engine.embed_images([image])[0], atol=1e-5)


def assert_one_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    """The run failed as RayClusterError with one error line holding ``needles``; that line."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("clipblip: ")]
    assert result.returncode == EXIT_CODES["RayClusterError"] == 19, result.stderr
    assert len(errors) == 1 and errors[0].startswith("clipblip: error: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    assert all(needle in errors[0] for needle in needles), errors[0]
    return errors[0]


# --- against a cluster of `ray start --head` (slow) ------------------------------------------------------

@pytest.mark.slow
def test_serve_deploy_of_the_emitted_config(head, clip, tmp_path):
    httpx = pytest.importorskip("httpx")
    config = tmp_path / "serve.yaml"
    result = clipblip(head.env, "serve", clip, "--emit-config", config, "--port", head.http_port, "--threads", 1)
    assert result.returncode == 0, result.stderr
    assert "RAY_AUTH_MODE=token serve deploy" in config.read_text()  # what the file tells its reader
    serve = str(Path(sys.executable).with_name("serve"))
    dashboard = f"http://127.0.0.1:{head.dashboard_port}"
    if head.auth:  # Ray's own CLI sends the token only with RAY_AUTH_MODE=token
        refused = subprocess.run([serve, "deploy", str(config), "-a", dashboard], env=head.env,
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "Authentication required" in refused.stderr, refused.stderr[-2000:]
    env = {**head.env, "RAY_AUTH_MODE": "token"} if head.auth else head.env
    deployed = subprocess.run([serve, "deploy", str(config), "-a", dashboard], env=env, capture_output=True,
                              text=True, timeout=120)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    url = f"http://127.0.0.1:{head.http_port}"
    try:
        wait_for_http(url)
        assert_answers_as_the_engine(url, clip)
        assert httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["random_weights"] is True
    finally:
        subprocess.run([serve, "shutdown", "-y", "-a", dashboard], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_serve_on_the_cluster_answers_and_leaves_it_running(head, clip, tmp_path):
    env = {**head.env, "RAY_ADDRESS": head.address}  # as the user set it from what `ray start` printed
    err_path = tmp_path / "server.err"
    with open(err_path, "w") as err:
        server = subprocess.Popen([sys.executable, "-m", "clipblip", "serve", str(clip), "--ray", "--port",
                                   str(head.http_port), "--threads", "1"], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{head.http_port}"
            wait_for_http(url, server, lambda: err_path.read_text(errors="replace"))
            assert_answers_as_the_engine(url, clip)
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=120)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    log = err_path.read_text(errors="replace")
    assert server.returncode == 0 and "server stopped" in log, log[-3000:]
    assert f"joining the Ray cluster at {head.address}" in log and "internal error" not in log
    if head.token:
        assert head.token not in log
    still_there = subprocess.run([sys.executable, "-c", f"from clipblip.raycluster import check_cluster; "
                                  f"check_cluster({head.address!r})"], env=head.env, cwd=ROOT, capture_output=True,
                                 text=True, timeout=120)  # the cluster stays, for others
    assert still_there.returncode == 0, still_there.stderr[-3000:]


@pytest.mark.slow
def test_index_on_the_cluster_gives_the_database_of_one_process(head, clip, collection, tmp_path):  # noqa: F811
    from clipblip.search import index_paths
    from tests.search.test_ray_index import assert_same_database, rows

    single = index_paths(tmp_path / "one.db", clip, [collection])
    result = clipblip(head.env, "index", clip, collection, "--db", tmp_path / "ray.db", "--ray", "--ray-address",
                      head.address, "--workers", 2, "--threads", 1, "--max-batch", 2, "--json")
    assert result.returncode == EXIT_CODES["PartialFailure"], result.stderr[-3000:]  # the broken files
    report = json.loads(result.stdout)
    assert report["embedded"] == len(VALID) and len(report["failed"]) == len(BROKEN) == len(single.failed)
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert_same_database(rows(tmp_path / "ray.db"), rows(tmp_path / "one.db"))


@pytest.mark.slow
def test_drivers_without_the_clusters_token(head, clip, collection, tmp_path):  # noqa: F811
    """Token on: no token, or another one, is one line (exit 19) and nothing written, for both commands.
    Token off: a driver told RAY_AUTH_MODE=token, with no token or a stray one, still joins."""
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    no_token = clean_environment(empty_home)
    stray = secrets.token_hex(32)
    wrong_token = {**head.env, "RAY_AUTH_TOKEN": stray}
    if not head.auth:
        for env in ({**no_token, "RAY_AUTH_MODE": "token"}, {**wrong_token, "RAY_AUTH_MODE": "token"}):
            joined = subprocess.run([sys.executable, "-c", f"from clipblip.raycluster import connect; "
                                     f"connect({head.address!r}, cpus=1); import ray; "
                                     f"print(ray.cluster_resources()['CPU'])"], env=env, cwd=ROOT,
                                    capture_output=True, text=True, timeout=300)
            assert joined.returncode == 0 and joined.stdout.strip() == "3.0", joined.stderr[-3000:]
        return
    for env, needles in ((no_token, ("requires token authentication", "RAY_AUTH_TOKEN")),
                         (wrong_token, ("refused the token in RAY_AUTH_TOKEN", "ray get-auth-token"))):
        started = time.monotonic()
        db = tmp_path / "refused.db"
        result = clipblip(env, "index", clip, collection, "--db", db, "--ray", "--ray-address", head.address)
        line = assert_one_line(result, head.address, *needles)
        assert not db.exists() and head.token not in result.stderr and stray not in result.stderr
        result = clipblip({**env, "RAY_ADDRESS": head.address}, "serve", clip, "--ray", "--port", free_port())
        assert assert_one_line(result, *needles) == line
        assert head.token not in result.stderr and stray not in result.stderr
        assert time.monotonic() - started < 120  # no 20 s of retries per command, no minutes of waiting


# --- how clipblip.raycluster decides (fast) ------------------------------------------------------------

class StandInGcs:
    """A gRPC server answering NodeInfoGcsService.GetClusterId as a Ray 2.60 GCS does: with ``token``,
    UNAUTHENTICATED unless the request carries ``authorization: Bearer <token>``."""

    def __init__(self, token: str | None):
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

        class NodeInfo(gcs_service_pb2_grpc.NodeInfoGcsServiceServicer):
            def GetClusterId(inner, request, context):  # noqa: N802, N805
                headers = dict(context.invocation_metadata())
                self.seen.append(headers.get("authorization"))
                if token is not None and headers.get("authorization") != f"Bearer {token}":
                    context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                  "InvalidAuthToken: Authentication token is missing or incorrect")
                return gcs_service_pb2.GetClusterIdReply(cluster_id=b"\1" * 28)

        self.seen: list[str | None] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        gcs_service_pb2_grpc.add_NodeInfoGcsServiceServicer_to_server(NodeInfo(), self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def stop(self):
        self.server.stop(0)


@pytest.fixture
def ray_env(monkeypatch, tmp_path):
    """No Ray setting in the environment, an empty HOME; Ray's cached config and token re-read after."""
    pytest.importorskip("grpc", reason="the `ray` extra (grpcio) is not installed")
    for name in [k for k in os.environ if k.startswith("RAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    yield tmp_path / "home"
    monkeypatch.undo()
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture
def gcs(request):
    server = StandInGcs(request.param)
    yield server
    server.stop()


@pytest.mark.parametrize("gcs", ["cluster-token"], indirect=True)
def test_a_cluster_that_wants_a_token_gets_the_one_where_ray_looks(gcs, ray_env, monkeypatch):
    from clipblip.raycluster import check_cluster

    with pytest.raises(RayClusterError, match=r"requires token authentication and no token is set here: set "
                                              r"RAY_AUTH_TOKEN") as refused:
        check_cluster(gcs.address)
    assert str(refused.value).startswith(f"the Ray cluster at {gcs.address} ") and "\n" not in str(refused.value)

    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-cluster-token")
    with pytest.raises(RayClusterError, match="refused the token in RAY_AUTH_TOKEN") as refused:
        check_cluster(gcs.address)
    assert "not-the-cluster-token" not in str(refused.value)

    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(ray_env / "missing"))
    with pytest.raises(RayClusterError, match="RAY_AUTH_TOKEN_PATH=.*missing cannot be read"):
        check_cluster(gcs.address)

    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")  # the default file, as `ray start` and `ray get-auth-token` use it
    (ray_env / TOKEN_FILE).parent.mkdir(parents=True)
    (ray_env / TOKEN_FILE).write_text("cluster-token\n")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # what this process was told gives way to what the cluster asks
    assert check_cluster(gcs.address) == gcs.address
    assert os.environ["RAY_AUTH_MODE"] == "token" and gcs.seen[-1] == "Bearer cluster-token"
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert get_authentication_mode() == AuthenticationMode.TOKEN  # Ray's own config agrees: ray.init sends it


@pytest.mark.parametrize("gcs", [None], indirect=True)
def test_a_cluster_without_authentication_gets_no_token(gcs, ray_env, monkeypatch):
    from clipblip.raycluster import check_cluster

    (ray_env / TOKEN_FILE).parent.mkdir(parents=True)
    (ray_env / TOKEN_FILE).write_text("some-token")
    check_cluster(gcs.address)
    assert gcs.seen == [None] and "RAY_AUTH_MODE" not in os.environ
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    (ray_env / TOKEN_FILE).unlink()  # told to send a token, and none to send: Ray would refuse to start
    check_cluster(gcs.address)
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


def test_no_cluster_at_the_address_is_one_line_at_once(ray_env, tmp_path, capsys):
    port = free_port()  # nothing listens there
    started = time.monotonic()
    code, _, err = run_cli(capsys, "index", tmp_path / "model", tmp_path, "--db", tmp_path / "p.db", "--ray",
                           "--ray-address", f"127.0.0.1:{port}")
    assert code == EXIT_CODES["RayClusterError"] == 19 and time.monotonic() - started < 30
    assert err.startswith(f"clipblip: error: no Ray cluster answers at 127.0.0.1:{port} (UNAVAILABLE")
    assert "ray start --head" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.db").exists()


def test_addresses_that_are_not_a_clusters(ray_env):
    from clipblip.raycluster import check_cluster

    for address in ("ray://127.0.0.1:10001", "127.0.0.1", "localhost:port"):
        with pytest.raises(UsageError, match="host:port"):
            check_cluster(address)
