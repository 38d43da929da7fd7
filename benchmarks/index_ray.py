"""Indexing throughput: one process against Ray Data with 1 and 2 workers, on the same photos and cores.

    python benchmarks/index_ray.py [--images 960] [--model random:clip-base] [--precision int8] [--out DIR]

A collection of --images photo-sized JPEGs (crops of matplotlib's sample photos at 640 × 480, each
different) is indexed into a fresh database by: one process (2 engine threads); Ray with 1 worker of 2
threads; Ray with 2 workers of 1 thread (the 2 cores never oversubscribed). Ray's cluster start is timed
apart from the run. Also timed, in this process: the engine alone on the same files (read, decode, embed)
and the driver alone (committing rows to SQLite), which give the fraction of a run outside the engine
and, from it, what N nodes would give (benchmarks/README.md). Each run reports its steady rate (from its
first committed batch to its last) apart from its start (loading the engines, Ray's actors). Writes
results.json and results.md.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from common import (PHOTOS, cell, commit_text, environment, export_once, machine_text, sample_image, say, table,
                    write_results)  # benchmarks/common.py


def collection(root: Path, count: int) -> list[Path]:
    photos = [sample_image(name).resize((800, 600)) for name in PHOTOS]
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        x, y = (i * 7) % 160, (i * 13) % 120
        path = root / f"photo_{i:05d}.jpg"
        photos[i % 2].crop((x, y, x + 640, y + 480)).save(path, quality=90)
        paths.append(path)
    return paths


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Clock:
    """A run's progress callback: when the first batch was committed, and when the last."""

    def __init__(self):
        self.start = time.perf_counter()
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] = (self.start, 0)

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, done)
        self.last = (now, done)

    def summary(self) -> dict:
        (t1, n1), (t2, n2) = self.first, self.last
        return {"seconds": t2 - self.start, "images_per_s": n2 / (t2 - self.start), "first_batch_s": t1 - self.start,
                "steady_images_per_s": (n2 - n1) / (t2 - t1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=960)
    parser.add_argument("--model", default="random:clip-base")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--out", default="bench-output/index-ray")
    parser.add_argument("--work", default=None, help="keep the export and photos here, and reuse them")
    args = parser.parse_args(argv)

    import ray

    from clipblip.search import index_paths
    from clipblip.search.indexer import open_model
    from clipblip.search.ray_index import RayIndexer
    from clipblip.search.store import Entry, Meta, Store

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    with (nullcontext(args.work) if args.work else tempfile.TemporaryDirectory()) as tmp:
        tmp = Path(tmp)
        model = export_once(args.model, tmp / f"model-{args.precision}", precision=args.precision)
        photos = tmp / "photos"
        paths = sorted(photos.glob("*.jpg")) if photos.is_dir() else []
        if len(paths) != args.images:
            shutil.rmtree(photos, ignore_errors=True)
            paths = collection(photos, args.images)
        n = len(paths)

        def fresh(name: str) -> Path:
            db = tmp / f"{name}.db"
            db.unlink(missing_ok=True)
            return db

        # the engine alone, in this process: read + decode + embed, batch by batch (warm; this VM's speed moves
        # ±10 % from minute to minute, so the best of 3 passes)
        engine = open_model(model, threads=2, max_batch=args.max_batch)
        engine.embed_images([str(p) for p in paths[: args.max_batch]])
        engine_s = min(timed(lambda: [engine.embed_images([str(p) for p in paths[i:i + args.max_batch]])
                                      for i in range(0, n, args.max_batch)]) for _ in range(3))  # best of 3
        vectors = engine.embed_images([str(p) for p in paths[: args.max_batch]])
        del engine

        # the driver alone: committing n rows, batch by batch
        def commits():
            with Store.create(fresh("commits"), Meta(str(model), "0" * 64, "clip", vectors.shape[1])) as store:
                for i in range(0, n, args.max_batch):
                    for j, p in enumerate(paths[i:i + args.max_batch]):
                        store.put(Entry(str(p), 1, 1, f"{i + j:064x}"), vectors[j % len(vectors)])
                    store.commit()
        driver_s = timed(commits)

        say("timing one process")
        clock = Clock()
        index_paths(fresh("single"), model, [photos], threads=2, max_batch=args.max_batch, progress=clock)
        results["one process, 2 threads"] = clock.summary()
        for workers, threads in ((1, 2), (2, 1)):
            say(f"timing Ray, {workers} worker(s) x {threads} thread(s)")
            start_s = timed(lambda: ray.init(address="local", num_cpus=workers * threads, include_dashboard=False,
                                             logging_level="ERROR", log_to_driver=False))
            clock = Clock()
            try:
                RayIndexer(fresh(f"ray{workers}"), model, workers=workers, threads=threads,
                           max_batch=args.max_batch).run([str(photos)], clock)
            finally:
                ray.shutdown()
            results[f"Ray, {workers} worker(s) x {threads} thread(s)"] = {**clock.summary(), "cluster_start_s": start_s}
    single = results["one process, 2 threads"]["steady_images_per_s"]
    ray_one = results["Ray, 1 worker(s) x 2 thread(s)"]["steady_images_per_s"]
    report = {
        "date": time.strftime("%Y-%m-%d"), "environment": environment(2, "ray", "onnxruntime"),
        "model": f"{args.model} {args.precision}", "images": n,
        "image_size": "640x480 JPEG", "max_batch": args.max_batch, "runs": results,
        "engine_alone_s": engine_s, "engine_alone_images_per_s": n / engine_s, "driver_commits_s": driver_s,
        "ray_overhead_ms_per_image": 1000 * (1 / ray_one - 1 / single),
        "outside_engine_fraction_single": 1 - (engine_s / n) * single,  # of a steady one-process run
    }
    env = report["environment"]
    lines = [f"# Indexing on Ray Data ({report['date']})", "",
             f"{machine_text(env)}; Ray {env['ray']}, onnxruntime {env['onnxruntime']}, clipblip at "
             f"{commit_text(env)}; {report['model']}; {n} photos of 640 × 480; batches of {args.max_batch}.",
             ""]
    lines += table(["run", "steady images/s", "whole run images/s", "seconds", "to first batch s", "cluster start s"], (
        [name, cell(run["steady_images_per_s"]), cell(run["images_per_s"]), cell(run["seconds"]),
         cell(run["first_batch_s"]), cell(run.get("cluster_start_s"))] for name, run in results.items()))
    lines += ["", f"- engine alone (read, decode, embed; 2 threads): {n / engine_s:.1f} images/s",
              f"- driver alone (SQLite commits): {1000 * driver_s / n:.2f} ms an image",
              f"- Ray's overhead, steady state (1 worker x 2 threads against one process): "
              f"{report['ray_overhead_ms_per_image']:.1f} ms an image",
              f"- one process, time outside the engine: {100 * report['outside_engine_fraction_single']:.0f} %"]
    write_results(out / "results.json", report, "\n".join(lines))
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
