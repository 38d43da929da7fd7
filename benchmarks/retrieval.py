"""Retrieval benchmark: approximate (HNSW, clipblip.search.ann) against exact numpy search, and indexing
throughput of `clipblip index` with int8 CLIP base against eager PyTorch.

    python benchmarks/retrieval.py [--quick] [--sizes 10000,100000,1000000] [--out bench-output/retrieval]

Search: synthetic 512-dimensional vectors shaped like embeddings (a Gaussian mixture of a few thousand
clusters, L2-normalised); queries are data points moved by noise and renormalised (near the data, not in
it). For each size: the HNSW build time, the query latency p50/p95 of one query at a time (in memory, the
index already loaded: what a query costs once the cache is open), recall@10 against exact search, and the
latency of exact search as clipblip does it (matrix-vector product and argsort). efSearch is swept; the
row marked default is ann.EF_SEARCH.

Indexing: ~64 generated photos-like images indexed into a fresh database with `index_paths` (what
`clipblip index` runs; the model opened beforehand) at --max-batch 1, 8, 16, against a plain loop over
`CLIPModel.get_image_features` at batch 1 with the CLIPImageProcessor preprocessing, the same random
clip-base weights, images and threads.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (REPO, environment, export_once, measured_line, median_ms, say, table,
                    write_results)  # benchmarks/common.py

DIM = 512
CLUSTERS = 4096
LATENT = 64
EF_SWEEP = (64, 128, 256, 512, 1024)
LIBRARIES = ("faiss", "numpy", "onnxruntime", "torch")
MODEL_DIR = REPO / "bench-output" / "models" / "clip-base-int8"


def mixture(n: int, rng: np.random.Generator, centers: np.ndarray, basis: np.ndarray, spread: float = 0.8) \
        -> np.ndarray:
    """Cluster centre + anisotropic noise (a LATENT-d latent with a power-law spectrum, projected to DIM, as
    embeddings' variance concentrates in few directions) + a little isotropic noise; L2-normalised."""
    out = np.empty((n, DIM), np.float32)
    step = 65536
    for start in range(0, n, step):
        m = min(step, n - start)
        labels = rng.integers(0, len(centers), m)
        noise = rng.standard_normal((m, LATENT), dtype=np.float32) @ basis
        noise += rng.standard_normal((m, DIM), dtype=np.float32) * (0.2 / np.sqrt(DIM))
        block = centers[labels] + noise * spread
        out[start:start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    result = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), 256):
        scores = queries[start:start + 256] @ vectors.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1)
        result[start:start + 256] = np.take_along_axis(part, order, 1)
    return result


def bench_size(n: int, n_queries: int, threads: int, ef_sweep=EF_SWEEP) -> dict:
    import faiss

    from clipblip.search import ann

    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(n)
    centers = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    t = time.perf_counter()
    scale = (np.arange(1, LATENT + 1, dtype=np.float32) ** -0.5)[:, None]
    basis = rng.standard_normal((LATENT, DIM), dtype=np.float32) * scale
    basis /= np.sqrt((basis ** 2).sum())  # noise of unit expected norm before `spread`
    vectors = mixture(n, rng, centers, basis)
    picks = vectors[rng.integers(0, n, n_queries)]
    queries = picks + rng.standard_normal(picks.shape, dtype=np.float32) * (0.4 / np.sqrt(DIM))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    queries = queries.astype(np.float32)  # float32 like query.py's query (a float64 one would make numpy upcast)
    say(f"[{n}] data in {time.perf_counter() - t:.1f} s")
    truth = exact_topk(vectors, queries, 10)

    exact_times = []
    np.argsort(-(vectors @ queries[0]), kind="stable")  # warm-up
    for q in queries[: min(n_queries, 30)]:
        start = time.perf_counter()
        scores = vectors @ q
        np.argsort(-scores, kind="stable")[:10]
        exact_times.append((time.perf_counter() - start) * 1000)

    t = time.perf_counter()
    index = ann.AnnIndex.build(vectors, [str(i) for i in range(n)])
    build_s = time.perf_counter() - t
    say(f"[{n}] HNSW build {build_s:.1f} s")
    sweep = {}
    for ef in sorted(set(ef_sweep) | {ann.EF_SEARCH}):
        index.search(queries[0], 10, ef_search=ef)  # warm-up
        times, hits = [], 0
        for q, want in zip(queries, truth):
            start = time.perf_counter()
            ids, _ = index.search(q, 10, ef_search=ef)
            times.append((time.perf_counter() - start) * 1000)
            hits += len(set(ids.tolist()) & set(want.tolist()))
        sweep[ef] = {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
                     "recall_at_10": hits / (10 * len(queries))}
        say(f"[{n}] ef {ef}: {sweep[ef]}")
    del index, vectors
    return {"n": n, "build_s": build_s, "exact_p50_ms": float(np.percentile(exact_times, 50)),
            "exact_p95_ms": float(np.percentile(exact_times, 95)), "ef_default": ann.EF_SEARCH,
            "hnsw": {str(ef): v for ef, v in sweep.items()}}


def make_images(folder: Path, count: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        h, w = int(rng.integers(240, 640)), int(rng.integers(240, 640))
        y, x = np.mgrid[0:h, 0:w]
        base = rng.integers(0, 256, 3)
        img = (base + 60 * np.sin(x[..., None] / rng.uniform(5, 40) + rng.uniform(0, 6, 3))
               + 40 * np.cos(y[..., None] / rng.uniform(5, 40))).clip(0, 255).astype(np.uint8)
        path = folder / f"img{i:03d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        paths.append(path)
    return paths


def bench_indexing(count: int, threads: int, batches: tuple[int, ...], repeat: int) -> dict:
    import torch
    from PIL import Image

    from clipblip.search import index_paths
    from clipblip.search.indexer import open_model

    export_once("random:clip-base", MODEL_DIR, precision="int8")
    torch.set_num_threads(threads)
    result = {"images": count, "threads": threads, "model": "random:clip-base, int8 export", "clipblip": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        paths = make_images(folder, count)
        for batch in batches:
            engine = open_model(MODEL_DIR, provider="cpu", threads=threads, max_batch=batch)

            def once():
                db = Path(tempfile.mkdtemp(dir=tmp)) / "index.db"
                report = index_paths(db, MODEL_DIR, [str(folder)], max_batch=batch, provider="cpu", threads=threads,
                                     engine=engine)
                assert report.embedded == count, report.to_dict()

            ms = median_ms(once, repeat)
            result["clipblip"][str(batch)] = {"median_s": ms / 1000, "images_per_s": count / (ms / 1000)}
            say(f"index --max-batch {batch}: {count / (ms / 1000):.1f} images/s")

        from clipblip.export.sources import load_source

        clip = load_source("random:clip-base")

        def eager():
            with torch.inference_mode():
                for p in paths:
                    with Image.open(p) as im:
                        pixels = clip.image_processor(images=im.convert("RGB"), return_tensors="pt")["pixel_values"]
                    clip.model.get_image_features(pixel_values=pixels)

        ms = median_ms(eager, repeat)
        result["eager"] = {"median_s": ms / 1000, "images_per_s": count / (ms / 1000)}
        say(f"eager batch 1: {count / (ms / 1000):.1f} images/s")
    return result


def markdown(report: dict) -> str:
    lines = [measured_line(report["date"], report["environment"], *LIBRARIES), "",
             "## Search: HNSW (faiss IndexHNSWFlat, M=32, efConstruction=40) vs exact numpy", "",
             f"{DIM}-d Gaussian mixture of {CLUSTERS} clusters (anisotropic noise: a {LATENT}-d power-law latent), "
             f"L2-normalised; {report['queries']} queries near the "
             "data, one at a time, index in memory.", ""]
    lines += table(["vectors", "build s", "exact p50 ms", "exact p95 ms", "efSearch", "HNSW p50 ms", "HNSW p95 ms",
                    "recall@10"], (
        [f"{row['n']:,}", f"{row['build_s']:.1f}", f"{row['exact_p50_ms']:.2f}", f"{row['exact_p95_ms']:.2f}",
         f"{ef}{' (default)' if int(ef) == row['ef_default'] else ''}", f"{v['p50_ms']:.3f}", f"{v['p95_ms']:.3f}",
         f"{v['recall_at_10']:.4f}"] for row in report["search"] for ef, v in row["hnsw"].items()), align="rrrrrrrr")
    idx = report.get("indexing")
    if idx:
        lines += ["", f"## Indexing: {idx['images']} images, {idx['model']}, {idx['threads']} threads", ""]
        rates = {f"clipblip index --max-batch {batch}": v["images_per_s"] for batch, v in idx["clipblip"].items()}
        rates["eager CLIPModel.get_image_features, batch 1 (with CLIPImageProcessor)"] = idx["eager"]["images_per_s"]
        lines += table(["variant", "images/s"], ([name, f"{rate:.1f}"] for name, rate in rates.items()), align="lr")
    lines += ["", "## Goals", ""] + [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in report["goals"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k vectors and 8 images: checks the harness only")
    parser.add_argument("--sizes", default=None, help="comma-separated vector counts (default 10000,100000,1000000)")
    parser.add_argument("--queries", type=int, default=None, help="queries per size (default 500, quick 100)")
    parser.add_argument("--images", type=int, default=None, help="images to index (default 64, quick 8)")
    parser.add_argument("--ef", default=None, help="comma-separated efSearch values to sweep (default "
                        + ",".join(map(str, EF_SWEEP)) + "; ann.EF_SEARCH is always added)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-indexing", action="store_true")
    parser.add_argument("--out", default="bench-output/retrieval")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else \
        ([10_000] if args.quick else [10_000, 100_000, 1_000_000])
    queries = args.queries or (100 if args.quick else 500)
    images = args.images or (8 if args.quick else 64)
    report = {"date": time.strftime("%Y-%m-%d"), "environment": environment(args.threads, *LIBRARIES),
              "queries": queries, "search": [], "goals": []}
    for n in sizes:
        report["search"].append(bench_size(n, queries, args.threads,
                                           [int(e) for e in args.ef.split(",")] if args.ef else EF_SWEEP))
    if not args.skip_indexing:
        report["indexing"] = bench_indexing(images, args.threads, (1, 8, 16), 1 if args.quick else 3)

    biggest = max(report["search"], key=lambda r: r["n"])
    best = biggest["hnsw"][str(biggest["ef_default"])]
    report["goals"].append((f"query p50 under 20 ms with recall@10 >= 0.95 at {biggest['n']:,} vectors on "
                            f"{args.threads} threads: p50 {best['p50_ms']:.2f} ms, recall@10 {best['recall_at_10']:.4f}"
                            + ("" if biggest["n"] >= 1_000_000 else " (the goal names 1M; not measured here)"),
                            best["p50_ms"] < 20 and best["recall_at_10"] >= 0.95 and biggest["n"] >= 1_000_000))
    if "indexing" in report:
        idx = report["indexing"]
        top = max(v["images_per_s"] for v in idx["clipblip"].values())
        eager = idx["eager"]["images_per_s"]
        report["goals"].append((f"indexing with int8 CLIP base at least 2x the eager batch-1 loop: best "
                                f"{top:.1f} images/s vs eager {eager:.1f} ({top / eager:.2f}x)", top >= 2 * eager))
    write_results(Path(args.out) / "results.json", report, markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
