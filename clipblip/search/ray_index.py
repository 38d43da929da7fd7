"""`clipblip index --ray`: the same index, its images embedded by an actor pool on Ray Data.

The driver does what a single-process run does: it lists the files, decides from the database which are
new or changed (size, mtime), and commits every batch that comes back, so an interruption, a lost worker
or a lost node loses at most the batches in flight, and the same command resumes. Ray Data reads and
embeds: ``map_batches`` over ``--workers`` actors, each holding one engine of the model folder, loaded
once. A worker reads a file once, hashes those bytes and embeds them, so a file is read by one machine
only. Per-item errors come back as data, like every other clipblip result.

Paths, not bytes, travel to the workers: the model folder and the images must be readable at the same
absolute paths on every node (one shared volume, as the RayJob of :func:`rayjob_manifest` mounts). The
folder is not shipped through Ray's object store: images must be shared anyway, a folder may be larger
than an object worth copying to every actor, and each node checks the folder where it runs, as the
engine always does. Ray restarts a killed actor and retries its batch (Ray Data's default for actor
pools: ``max_restarts=-1``, ``max_task_retries=-1``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..defaults import MAX_BATCH, MAX_IMAGE_PIXELS
from ..engine.items import batches
from ..engine.images import describe
from ..errors import ClipblipError, ImageError, UsageError
from ..inputs import is_video_name
from ..manifest import sha256_of
from ..raycluster import check_cluster, cluster_address, connect
from .indexer import FOLD_SIMILARITY, FRAME_EVERY, Entry, Indexer, IndexReport, open_model
from .videos import Meter, video_segments
from .segments import Segment
from .store import Store

__all__ = ["RayIndexer", "EmbedFiles", "EmbedUnits", "rayjob_manifest"]


class EmbedUnits:
    """The actor of the pool over units of work (a batch of photos, or one video): :class:`EmbedFiles` per unit."""

    def __init__(self, **options):
        self.files = EmbedFiles(**options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = [self.files({"path": np.asarray(list(paths), dtype=object)}) for paths in batch["paths"]]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class EmbedFiles:
    """The actor of the pool: paths → (sha256 of the bytes read, embedding or error), in the batch's order; a
    video (one item of work) → a row per segment, each with the segment's times and ``parts``, the count of its
    video's rows (a video with no segment: one row with NaN times and ``parts`` 0)."""

    def __init__(self, model_dir: str, provider: str, threads: int | None, max_batch: int,
                 max_image_pixels: int | None, frame_every: float = 2.0, fold_similarity: float = 0.9):
        self.engine = open_model(model_dir, provider=provider, threads=threads, max_batch=max_batch,
                                 max_image_pixels=max_image_pixels)
        self.video_options = {"frame_every": frame_every, "fold_similarity": fold_similarity,
                              "max_batch": max_batch, "max_image_pixels": max_image_pixels}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        videos = [p for p in paths if is_video_name(p)]
        out = self.photos([p for p in paths if not is_video_name(p)])
        for path in videos:
            out = {k: np.concatenate([out[k], v]) for k, v in self.video(path).items()}
        return out

    def video(self, path: str) -> dict[str, np.ndarray]:
        dim = self.engine.embed_dim
        row = {"path": [path], "sha256": [""], "error": [""], "vector": np.full((1, dim), np.nan, np.float32),
               "start": [np.nan], "end": [np.nan], "frame": [np.nan], "duration": [np.nan], "parts": [0]}
        try:
            row["sha256"] = [sha256_of(path)]
        except OSError as e:
            row["error"] = [f"{path}: cannot be read ({e.strerror or e})"]
            return columns(row)
        try:
            duration, segments = video_segments(self.engine, path, **self.video_options)
        except ClipblipError as e:
            row["error"] = [str(e)]
            return columns(row)
        row["duration"] = [duration]
        if not segments:
            return columns(row)
        n = len(segments)
        return columns({"path": [path] * n, "sha256": row["sha256"] * n, "error": [""] * n,
                        "vector": np.stack([s.vector for s in segments]), "start": [s.start for s in segments],
                        "end": [s.end for s in segments], "frame": [s.frame for s in segments],
                        "duration": [duration] * n, "parts": [n] * n})

    def photos(self, paths: list[str]) -> dict[str, np.ndarray]:
        sha = [""] * len(paths)
        error = [""] * len(paths)
        vectors = np.full((len(paths), self.engine.embed_dim), np.nan, dtype=np.float32)
        readable, data = [], []
        for i, path in enumerate(paths):
            try:
                with open(path, "rb") as f:
                    content = f.read()
            except OSError as e:
                error[i] = f"{path}: cannot be read ({e.strerror or e})"
                continue
            sha[i] = hashlib.sha256(content).hexdigest()
            readable.append(i)
            data.append(content)
        if data:
            rows, failed = self.engine.embed_images(data, return_errors=True)  # rows (readable, dim)
            for j, i in enumerate(readable):
                if j in failed:  # named by its path, as a single-process run names it
                    error[i] = str(failed[j]).replace(describe(data[j]), paths[i], 1)
                else:
                    vectors[i] = rows[j]
        n = len(paths)
        return columns({"path": paths, "sha256": sha, "vector": vectors, "error": error, "start": [np.nan] * n,
                        "end": [np.nan] * n, "frame": [np.nan] * n, "duration": [np.nan] * n, "parts": [1] * n})


def columns(rows: dict) -> dict[str, np.ndarray]:
    """A batch of Ray Data's numpy format from lists: text columns as objects, times as float64."""
    out = {}
    for key, values in rows.items():
        if key == "vector":
            out[key] = np.asarray(values, dtype=np.float32)
        elif key in ("path", "sha256", "error"):
            out[key] = np.array(values, dtype=object)
        elif key == "parts":
            out[key] = np.asarray(values, dtype=np.int64)
        else:
            out[key] = np.asarray(values, dtype=np.float64)
    return out


class RayIndexer(Indexer):
    """An :class:`Indexer` whose changed files are embedded by ``workers`` actors of ``threads`` CPUs each."""

    def __init__(self, db: str | os.PathLike, model_dir: str | os.PathLike, *, workers: int = 1,
                 threads: int | None = None, address: str | None = None, max_batch: int = MAX_BATCH,
                 provider: str = "auto", max_image_pixels: int | None = MAX_IMAGE_PIXELS,
                 frame_every: float = FRAME_EVERY, fold_similarity: float = FOLD_SIMILARITY):
        if workers < 1:
            raise UsageError(f"--workers {workers}: must be at least 1")
        if threads is not None and threads < 1:
            raise UsageError(f"--threads {threads}: must be at least 1")
        import ray  # noqa: F401  (a missing `ray` extra is named before any work)
        import ray.data  # noqa: F401  (and Ray Data's own dependencies: pyarrow)

        super().__init__(db, model_dir, max_batch=max_batch, provider=provider, threads=threads,
                         max_image_pixels=max_image_pixels, frame_every=frame_every, fold_similarity=fold_similarity)
        self.workers, self.threads = workers, threads or 1
        self.address = cluster_address(address)

    def run(self, paths: Sequence[str], progress: Callable[[int, int], None] | None = None) -> IndexReport:
        import ray

        if self.address and not ray.is_initialized():
            check_cluster(self.address)  # a cluster that does not answer, or refuses us: before the database
        return super().run(paths, progress)

    def embed_changed(self, store: Store, known: dict[str, Entry], candidates: list,
                      progress: Callable[[int, int], None] | None) -> None:
        import ray

        started = not ray.is_initialized()
        if started:  # a local cluster (no address): exactly the CPUs the pool asks for
            connect(self.address, cpus=self.workers * self.threads, logging_level="ERROR")
        try:
            with warnings.catch_warnings():  # "fewer input blocks than actors": a small run uses fewer workers
                warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
                self.embed_on_ray(store, known, candidates, progress)
        finally:
            if started:
                ray.shutdown()

    def embed_on_ray(self, store: Store, known: dict[str, Entry], candidates: list,
                     progress: Callable[[int, int], None] | None) -> None:
        import ray.data

        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes on progress bars and timings
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver draws its own
        context.print_on_execution_start = False
        stats = {path: st for path, st in candidates}
        model_dir = str(Path(self.model_dir).absolute())  # the same path on every node
        photos = [path for path, _ in candidates if not is_video_name(path)]
        units = [photos[part] for part in batches(len(photos), self.max_batch)]  # a batch of photos, or one video
        units += [[path] for path, _ in candidates if is_video_name(path)]
        dataset = ray.data.from_items([{"paths": unit} for unit in units], override_num_blocks=max(1, len(units)))
        embedded = dataset.map_batches(
            EmbedUnits, batch_size=1, batch_format="numpy", num_cpus=self.threads,
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            fn_constructor_kwargs={"model_dir": model_dir, "threads": self.threads, "max_batch": self.max_batch,
                                   "frame_every": self.frame_every, "fold_similarity": self.fold_similarity,
                                   **{k: v for k, v in self.engine_options.items() if k != "threads"}})
        meter = Meter(candidates, progress)
        pending: dict[str, list[int]] = {}  # a video's rows seen so far, until all of them came
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            try:
                self.commit_results(store, known, batch, stats, pending, meter)
                store.commit()
            except KeyboardInterrupt:
                store.connection.rollback()
                raise

    def commit_results(self, store: Store, known: dict[str, Entry], batch: dict[str, Any], stats: dict,
                       pending: dict, meter: Meter) -> None:
        """A batch from the workers into the store, decided as a single-process run decides; a video once all its
        rows have come (they come in one batch from one worker; the count makes that no assumption)."""
        rows: dict[str, list[int]] = {}
        for i, path in enumerate(batch["path"]):
            rows.setdefault(str(path), []).append(i)
        for path, indices in rows.items():
            st, first = stats[path], indices[0]
            sha, error = str(batch["sha256"][first]), str(batch["error"][first])
            if not is_video_name(path):
                entry = Entry(path, st.st_size, st.st_mtime_ns, sha)
                if error:
                    self.fail(store, known, path, ImageError(error))
                elif not self.kept_unchanged(store, known, entry):
                    self.put(store, entry, np.asarray(batch["vector"][first], dtype=np.float32))
                meter.advance(len(indices))
                continue
            seen = pending.setdefault(path, [])
            seen.extend({k: batch[k][i] for k in batch} for i in indices)
            if len(seen) < max(int(batch["parts"][first]), 1):
                continue
            del pending[path]
            self.commit_video(store, known, path, st, seen)
            meter.advance(meter.seconds(path))

    def commit_video(self, store: Store, known: dict[str, Entry], path: str, st, rows: list[dict]) -> None:
        first = rows[0]
        if first["error"]:
            self.fail(store, known, path, ImageError(str(first["error"])))
            return
        duration = float(first["duration"])
        entry = Entry(path, st.st_size, st.st_mtime_ns, str(first["sha256"]), duration)
        if self.kept_unchanged(store, known, entry):
            return
        segments = [Segment(float(r["start"]), float(r["end"]), float(r["frame"]),
                            np.asarray(r["vector"], dtype=np.float32)) for r in rows if int(r["parts"]) > 0]
        segments.sort(key=lambda segment: segment.start)
        self.put_video(store, entry, segments)


def rayjob_manifest(model_dir: str, paths: Sequence[str], db: str, *, name: str, image: str, workers: int,
                    threads: int, volume_claim: str, mount: str, ray_version: str,
                    options: Sequence[str] = ()) -> dict[str, Any]:
    """A KubeRay ``RayJob`` that runs ``clipblip index ... --ray`` on a cluster it creates: a head and
    ``workers`` worker pods of ``threads`` CPUs, each mounting the persistent volume claim ``volume_claim`` at
    ``mount``, where the model folder, the images and the database are (the same paths everywhere); ``options``:
    more `index` options, passed as given."""
    volume = "clipblip-data"
    mounts = [{"name": volume, "mountPath": mount}]
    volumes = [{"name": volume, "persistentVolumeClaim": {"claimName": volume_claim}}]

    def pod(container: str, cpus: int) -> dict[str, Any]:
        resources = {"cpu": str(cpus), "memory": f"{2 + 2 * cpus}Gi"}
        return {"spec": {"containers": [{"name": container, "image": image, "volumeMounts": mounts,
                                         "resources": {"requests": resources, "limits": resources}}],
                         "volumes": volumes}}

    command = ["clipblip", "index", model_dir, *paths, "--db", db, "--ray", "--workers", str(workers),
               "--threads", str(threads), *options]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name},
        "spec": {
            "entrypoint": shlex.join(command),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "rayClusterSpec": {
                "rayVersion": ray_version,
                # the head runs the driver (it writes the database) and no embedding
                "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": pod("ray-head", 1)},
                "workerGroupSpecs": [{
                    "groupName": "embed", "replicas": workers, "minReplicas": workers, "maxReplicas": workers,
                    "rayStartParams": {"num-cpus": str(threads)}, "template": pod("ray-worker", threads)}],
            },
        },
    }

