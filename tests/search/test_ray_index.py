"""`clipblip index --ray`: Ray Data embeds, the driver decides and commits. The same database as a
single-process run (over bad files and non-ASCII names), incremental runs, a worker killed mid-run, an
interrupted run resumed, and the KubeRay RayJob it emits. Ray runs on a local cluster on loopback; every
run is bounded by its collection's size."""

from __future__ import annotations

import json
import os
import secrets
import signal

import numpy as np
import pytest
import yaml
from PIL import Image

from clipblip.search import Store, index_paths
from tests.helpers import run_cli
from tests.search.test_search import BROKEN, VALID, collection  # noqa: F401  (the fixture)

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed")
pytest.importorskip("ray.data", reason="Ray Data (the `ray` extra: pyarrow) is not installed")

# KubeRay v1 RayJob CRD (ray-operator/config/crd/bases/ray.io_rayjobs.yaml): the fields it requires
REQUIRED = {"rayClusterSpec": ["headGroupSpec"], "headGroupSpec": ["template"],
            "workerGroupSpecs[]": ["groupName", "maxReplicas", "minReplicas", "template"],
            "podSpec": ["containers"], "containers[]": ["name"], "volumes[]": ["name"]}


def rows(db) -> dict[str, tuple]:
    with Store.open(db) as store:
        entries = store.entries()
        found, vectors = store.vectors()
    return {row.key: (entries[row.path].sha256, entries[row.path].size, vectors[i]) for i, row in enumerate(found)}


def assert_same_database(got, expected):
    assert sorted(got) == sorted(expected)
    for path, (sha, size, vector) in expected.items():
        assert got[path][:2] == (sha, size), path
        assert np.abs(got[path][2] - vector).max() < 1e-5, path


def actor_pids(name: str) -> list[int]:
    """Processes whose title Ray set to an actor of ``name`` (``ray::MapWorker(...)``), from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    title = f.read().decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::") and name in title:
                pids.append(int(entry))
    return sorted(pids)


def more_images(root, count):
    rng = np.random.default_rng(1)
    (root / "更多").mkdir(exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (24 + i % 7, 30, 3), dtype=np.uint8)).save(root / "更多" / f"图{i}.png")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray cluster for the module (2 CPUs): RayIndexer joins it rather than starting its own. Ray
    turns token authentication on for it, and writes ~/.ray/auth_token where it finds no token: the test's
    own token, in RAY_AUTH_TOKEN, keeps it from the real file."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        env.delenv("RAY_AUTH_MODE", raising=False)  # Ray sets it in this process; removed again after
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        yield
        ray.shutdown()


@pytest.mark.slow
def test_the_same_database_as_one_process_and_incremental(local_ray, collection, tmp_path, capsys):  # noqa: F811
    from clipblip.search.ray_index import RayIndexer

    clip = collection.parent / "clip"
    from clipblip.export import export_model

    export_model("random:clip-tiny", clip)
    single = index_paths(tmp_path / "one.db", clip, [collection])
    code, out, err = run_cli(capsys, "index", clip, collection, "--db", tmp_path / "ray.db", "--ray", "--workers",
                             "2", "--threads", "1", "--max-batch", "2", "--json")
    assert code == 16 and len(single.failed) == len(BROKEN) == out.count('"error"'), err
    assert_same_database(rows(tmp_path / "ray.db"), rows(tmp_path / "one.db"))
    assert len(rows(tmp_path / "ray.db")) == len(VALID)

    (collection / "red.png").unlink()  # gone, changed, added, touched with the same bytes
    Image.new("RGB", (40, 30), (20, 220, 20)).save(collection / "blue.png")
    Image.new("RGB", (30, 30), (1, 2, 3)).save(collection / "new 新.png")
    os.utime(collection / "hopper.jpg", ns=(1, 1))
    report = RayIndexer(tmp_path / "ray.db", clip, workers=2, max_batch=2).run([str(collection)])
    again = index_paths(tmp_path / "one.db", clip, [collection])
    assert (report.embedded, report.removed, report.unchanged) == (2, 1, len(VALID) - 2) == (
        again.embedded, again.removed, again.unchanged)
    assert_same_database(rows(tmp_path / "ray.db"), rows(tmp_path / "one.db"))


@pytest.mark.slow
def test_videos_on_ray_data_give_the_database_of_one_process(local_ray, collection, tmp_path, capsys):  # noqa: F811
    """A video is one item of work: its segments come back from one worker and are committed whole."""
    pytest.importorskip("av", reason="PyAV (the `video` extra) is not installed")
    from tests.search.test_video import make_videos

    from clipblip.export import export_model

    clip = tmp_path / "clip"
    export_model("random:clip-tiny", clip)
    made = make_videos.make_collection(tmp_path / "media")
    single = index_paths(tmp_path / "one.db", clip, [tmp_path / "media"], fold_similarity=0.9999)
    code, out, err = run_cli(capsys, "index", clip, tmp_path / "media", "--db", tmp_path / "ray.db", "--ray",
                             "--workers", "2", "--threads", "1", "--fold-similarity", 0.9999, "--json")
    assert code == 16, err
    report = json.loads(out)
    assert (report["videos"], report["segments"]) == (single.videos, single.segments) and single.videos == 5
    assert sorted(f["path"] for f in report["failed"]) == sorted(f["path"] for f in single.failed)
    assert_same_database(rows(tmp_path / "ray.db"), rows(tmp_path / "one.db"))
    with Store.open(tmp_path / "ray.db") as ray_db, Store.open(tmp_path / "one.db") as one_db:
        for key in ("h264", "vp9", "vfr"):
            assert ray_db.segments(str(made[key])) == one_db.segments(str(made[key]))
            assert ray_db.entries()[str(made[key])] == one_db.entries()[str(made[key])]


@pytest.mark.slow
def test_a_killed_worker_and_an_interrupted_run_end_in_a_complete_database(local_ray, collection,  # noqa: F811
                                                                           tmp_path):
    from clipblip.export import export_model
    from clipblip.search.ray_index import RayIndexer

    more_images(collection, 40)
    clip = tmp_path / "clip"
    export_model("random:clip-tiny", clip)
    index_paths(tmp_path / "one.db", clip, [collection])
    killed = []

    def kill_a_worker(done, total):
        if killed:
            return
        workers = actor_pids("MapWorker")
        assert workers, "no embedding actor found"
        os.kill(workers[0], signal.SIGKILL)  # its batch in flight is retried on a restarted actor
        killed.append(workers[0])

    report = RayIndexer(tmp_path / "ray.db", clip, workers=2, max_batch=2).run([str(collection)], kill_a_worker)
    assert killed and not report.interrupted and report.embedded == len(VALID) + 40
    assert_same_database(rows(tmp_path / "ray.db"), rows(tmp_path / "one.db"))

    stopped = []

    def interrupt(done, total):  # Ctrl-C after some batches: those are kept, the same command resumes
        if done >= 10 and not stopped:
            stopped.append(done)
            raise KeyboardInterrupt

    indexer = RayIndexer(tmp_path / "again.db", clip, workers=2, max_batch=2)
    with pytest.raises(KeyboardInterrupt):
        indexer.run([str(collection)], interrupt)
    kept = rows(tmp_path / "again.db")
    assert indexer.report.interrupted and 0 < len(kept) < len(VALID) + 40
    resumed = RayIndexer(tmp_path / "again.db", clip, workers=2, max_batch=2).run([str(collection)])
    assert resumed.embedded == len(VALID) + 40 - len(kept) and resumed.unchanged == len(kept)
    assert_same_database(rows(tmp_path / "again.db"), rows(tmp_path / "one.db"))


def test_emitted_rayjob_has_what_kuberay_requires(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    code, _, err = run_cli(capsys, "index", "/data/models/clip", "/data/photos", "--db", "/data/photos.db",
                           "--emit-job", job, "--workers", "3", "--threads", "2", "--job-image", "me/clipblip:1")
    assert code == 0, err
    text = job.read_text()
    assert text.startswith("# written by clipblip")
    document = yaml.safe_load(text)
    assert document["apiVersion"] == "ray.io/v1" and document["kind"] == "RayJob" and document["metadata"]["name"]
    spec = document["spec"]
    assert spec["entrypoint"] == ("clipblip index /data/models/clip /data/photos --db /data/photos.db --ray "
                                  "--workers 3 --threads 2 --frame-every 2 --fold-similarity 0.9")
    cluster = spec["rayClusterSpec"]
    head, workers = cluster["headGroupSpec"], cluster["workerGroupSpecs"]
    groups = {"rayClusterSpec": [cluster], "headGroupSpec": [head], "workerGroupSpecs[]": workers,
              "podSpec": [head["template"]["spec"]] + [w["template"]["spec"] for w in workers]}
    groups["containers[]"] = [c for pod in groups["podSpec"] for c in pod["containers"]]
    groups["volumes[]"] = [v for pod in groups["podSpec"] for v in pod["volumes"]]
    for where, fields in REQUIRED.items():
        for item in groups[where]:
            assert all(field in item for field in fields), (where, item)
    assert workers[0]["replicas"] == 3 and workers[0]["rayStartParams"]["num-cpus"] == "2"
    assert cluster["rayVersion"] == ray.__version__
    for pod in groups["podSpec"]:
        assert pod["containers"][0]["image"] == "me/clipblip:1"
        assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/data"
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "clipblip-data"
    code, _, err = run_cli(capsys, "index", "models/clip", "/data/photos", "--db", "/data/p.db", "--emit-job",
                           tmp_path / "other.yaml")
    assert code == 2 and "under --job-mount /data" in err and not (tmp_path / "other.yaml").exists()
    code, _, err = run_cli(capsys, "index", "/data/m", "/data/photos", "--db", "/data/p.db", "--emit-job", job)
    assert code != 0 and "--force" in err  # an existing file is replaced only with --force


def test_ray_options_need_ray(tmp_path, capsys):
    code, _, err = run_cli(capsys, "index", tmp_path / "m", tmp_path, "--db", tmp_path / "p.db", "--workers", "2")
    assert code == 2 and "only with --ray" in err and not (tmp_path / "p.db").exists()
