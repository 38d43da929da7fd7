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
from ..engine.images import describe
from ..errors import ImageError, UsageError
from ..raycluster import check_cluster, cluster_address, connect
from .indexer import Entry, Indexer, IndexReport, open_model
from .store import Store

__all__ = ["RayIndexer", "EmbedFiles", "rayjob_manifest"]


class EmbedFiles:
    """The actor of the pool: paths → (sha256 of the bytes read, embedding or error), in the batch's order."""

    def __init__(self, model_dir: str, provider: str, threads: int | None, max_batch: int,
                 max_image_pixels: int | None):
        self.engine = open_model(model_dir, provider=provider, threads=threads, max_batch=max_batch,
                                 max_image_pixels=max_image_pixels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
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
        return {"path": np.array(paths, dtype=object), "sha256": np.array(sha, dtype=object), "vector": vectors,
                "error": np.array(error, dtype=object)}


class RayIndexer(Indexer):
    """An :class:`Indexer` whose changed files are embedded by ``workers`` actors of ``threads`` CPUs each."""

    def __init__(self, db: str | os.PathLike, model_dir: str | os.PathLike, *, workers: int = 1,
                 threads: int | None = None, address: str | None = None, max_batch: int = MAX_BATCH,
                 provider: str = "auto", max_image_pixels: int | None = MAX_IMAGE_PIXELS):
        if workers < 1:
            raise UsageError(f"--workers {workers}: must be at least 1")
        if threads is not None and threads < 1:
            raise UsageError(f"--threads {threads}: must be at least 1")
        import ray  # noqa: F401  (a missing `ray` extra is named before any work)
        import ray.data  # noqa: F401  (and Ray Data's own dependencies: pyarrow)

        super().__init__(db, model_dir, max_batch=max_batch, provider=provider, threads=threads,
                         max_image_pixels=max_image_pixels)
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
        dataset = ray.data.from_items([{"path": path} for path, _ in candidates],
                                      override_num_blocks=max(1, -(-len(candidates) // self.max_batch)))
        embedded = dataset.map_batches(
            EmbedFiles, batch_size=self.max_batch, batch_format="numpy", num_cpus=self.threads,
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            fn_constructor_kwargs={"model_dir": model_dir, "threads": self.threads, "max_batch": self.max_batch,
                                   **{k: v for k, v in self.engine_options.items() if k != "threads"}})
        done = 0
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            try:
                self.commit_results(store, known, batch, stats)
                store.commit()
            except KeyboardInterrupt:
                store.connection.rollback()
                raise
            done += len(batch["path"])
            if progress is not None:
                progress(done, len(candidates))

    def commit_results(self, store: Store, known: dict[str, Entry], batch: dict[str, Any], stats: dict) -> None:
        """A batch from the workers into the store, decided as a single-process run decides."""
        for path, sha, vector, error in zip(batch["path"], batch["sha256"], batch["vector"], batch["error"]):
            st = stats[str(path)]
            entry = Entry(str(path), st.st_size, st.st_mtime_ns, str(sha))
            if error:
                self.fail(store, known, entry.path, ImageError(str(error)))
            elif not self.kept_unchanged(store, known, entry):
                self.put(store, entry, np.asarray(vector, dtype=np.float32))


def rayjob_manifest(model_dir: str, paths: Sequence[str], db: str, *, name: str, image: str, workers: int,
                    threads: int, volume_claim: str, mount: str, ray_version: str) -> dict[str, Any]:
    """A KubeRay ``RayJob`` that runs ``clipblip index ... --ray`` on a cluster it creates: a head and
    ``workers`` worker pods of ``threads`` CPUs, each mounting the persistent volume claim ``volume_claim``
    at ``mount``, where the model folder, the images and the database are (the same paths everywhere)."""
    volume = "clipblip-data"
    mounts = [{"name": volume, "mountPath": mount}]
    volumes = [{"name": volume, "persistentVolumeClaim": {"claimName": volume_claim}}]

    def pod(container: str, cpus: int) -> dict[str, Any]:
        resources = {"cpu": str(cpus), "memory": f"{2 + 2 * cpus}Gi"}
        return {"spec": {"containers": [{"name": container, "image": image, "volumeMounts": mounts,
                                         "resources": {"requests": resources, "limits": resources}}],
                         "volumes": volumes}}

    command = ["clipblip", "index", model_dir, *paths, "--db", db, "--ray", "--workers", str(workers),
               "--threads", str(threads)]
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

