"""`clipblip index` and `clipblip search`: a photo collection in an SQLite database, searched by text or image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import PartialFailure
from ..video import clock
from .common import RANDOM_BANNER, check_argument_order, print_json
from .progress import ProgressBar


def cmd_index(args: argparse.Namespace) -> int:
    from ..manifest import Manifest
    from ..search.indexer import Indexer

    ray_only = [flag for flag, value in (("--ray-address", args.ray_address), ("--workers", args.workers != 1))
                if value]
    if ray_only and not args.ray and args.emit_job is None:
        from ..errors import UsageError

        raise UsageError(f"{ray_only[0]}: only with --ray (or --emit-job)")
    if args.emit_job is not None:
        return emit_job(args)
    check_argument_order(args, args.paths, "PATH")
    options = dict(max_batch=args.max_batch, provider=args.provider, threads=args.threads,
                   max_image_pixels=args.max_image_pixels, frame_every=args.frame_every,
                   fold_similarity=args.fold_similarity)
    if args.ray:
        from ..search.ray_index import RayIndexer

        indexer = RayIndexer(args.db, args.model_dir, workers=args.workers, address=args.ray_address, **options)
    else:
        indexer = Indexer(args.db, args.model_dir, **options)
    with ProgressBar(0, "index (photos + seconds of video)") as bar:
        try:
            report = indexer.run(args.paths, progress=lambda done, total: bar.update(done, total))
        except KeyboardInterrupt:
            report = indexer.report
    if Manifest.load(args.model_dir).random_weights:
        print(RANDOM_BANNER, file=sys.stderr)
    if args.json:
        print_json({**report.to_dict(), **({"interrupted": True} if report.interrupted else {})})
    else:
        videos = (f" ({report.videos} videos: {clock(report.video_seconds)} of video, {report.frames} frames in "
                  f"{report.segments} segments)" if report.videos else "")
        print(f"{args.db}: {report.embedded} embedded{videos}, {report.unchanged} unchanged, {report.removed} "
              f"removed, {report.skipped} skipped (not images or videos), {len(report.failed)} failed")
    for failure in report.failed:
        print(f"clipblip: error: {failure['error']}", file=sys.stderr)
    if report.interrupted:
        print("clipblip: interrupted; the batches written are kept, run the same command again to resume",
              file=sys.stderr)
        return 130
    return PartialFailure.exit_code if report.failed else 0


def emit_job(args: argparse.Namespace) -> int:
    """Write the KubeRay RayJob of this index (paths as the pods see them, under --job-mount)."""
    import posixpath

    import yaml

    from .. import __version__
    from ..errors import UsageError
    from ..files import atomic_output
    from ..search.ray_index import rayjob_manifest

    mount = args.job_mount.rstrip("/") or "/"
    for name, path in [("DIR", args.model_dir), ("--db", args.db), *(("PATH", p) for p in args.paths)]:
        if not posixpath.isabs(path) or not posixpath.normpath(path).startswith(mount + "/"):
            raise UsageError(f"{name} {path}: with --emit-job, give the path the pods see, under --job-mount {mount}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        ray_version = version("ray")  # the cluster's Ray: the one this clipblip was installed with
    except PackageNotFoundError:
        raise ModuleNotFoundError("No module named 'ray'", name="ray") from None  # named as a missing extra
    job = rayjob_manifest(args.model_dir, args.paths, args.db, name="clipblip-index", image=args.job_image,
                          workers=args.workers, threads=args.threads or 1, volume_claim=args.job_volume_claim,
                          mount=mount, ray_version=ray_version,
                          options=["--frame-every", f"{args.frame_every:g}", "--fold-similarity",
                                   f"{args.fold_similarity:g}"])
    header = (f"# written by clipblip {__version__}: a KubeRay RayJob; `kubectl apply -f {args.emit_job}` creates a "
              f"Ray cluster,\n# runs this index on it, and deletes the cluster when it ends. The image must hold "
              f"clipblip with the `ray` extra;\n# the claim {args.job_volume_claim!r} must hold the model folder, the "
              f"images and the database at these paths.\n")
    with atomic_output(args.emit_job, args.force) as tmp:
        tmp.write_text(header + yaml.safe_dump(job, sort_keys=False, allow_unicode=True), encoding="utf-8")
    print(f"wrote {args.emit_job}", file=sys.stderr)
    return 0


def like_argument(value: str) -> tuple[str, float | None]:
    """``PATH`` or ``PATH@SECONDS`` (a time in a video; a path that itself holds "@" is taken whole when it
    exists), the path made absolute as the index stores it."""
    import os

    from ..errors import UsageError

    path, at = value, None
    if "@" in value and not os.path.lexists(value):
        path, _, time = value.rpartition("@")
        try:
            at = float(time)
        except ValueError:
            raise UsageError(f"--like {value}: give PATH or PATH@SECONDS (a time in a video, e.g. clip.mp4@83.5)") \
                from None
        if not 0 <= at < float("inf"):
            raise UsageError(f"--like {value}: the time must be at least 0 seconds")
    return os.path.abspath(path), at


def hit_line(hit) -> str:
    """``score  PATH`` for a photo, ``score  PATH @ mm:ss–mm:ss`` for a video segment."""
    where = f"{hit.path} @ {clock(hit.start)}–{clock(hit.end)}" if hit.is_segment else hit.path
    return f"{hit.score:.4f}  {where}"


def cmd_search(args: argparse.Namespace) -> int:
    from ..search import search

    if sum(q is not None for q in (args.text, args.image, args.like)) != 1:
        from ..errors import UsageError

        raise UsageError("search: give one of --text, --image or --like")
    like, like_at = like_argument(args.like) if args.like is not None else (None, None)

    def skipped(path: str, error) -> None:
        message = str(error)
        print(f"clipblip: warning: left out of the re-ranking: {message if path in message else f'{path}: {message}'}",
              file=sys.stderr)

    hits = search(args.db, text=args.text, image=args.image, like=like, like_at=like_at, k=args.k, model_dir=args.model,
                  rerank=args.rerank is not None, itm_dir=args.rerank or None, provider=args.provider,
                  threads=args.threads, on_error=skipped)
    folders = query_folders(args.db, args.model, args.rerank)
    random_weights = random_weights_note(folders)
    if args.text is not None:
        unknown_text_warning(folders, args.text)
    if args.json:
        query = ({"text": args.text} if args.text is not None else {"image": args.image} if args.image is not None
                 else {"like": like, **({} if like_at is None else {"at": like_at})})
        print_json({"query": query, "random_weights": random_weights, "hits": [hit.to_dict() for hit in hits]})
    else:
        for hit in hits:
            print(hit_line(hit))
    return 0


def query_folders(db: str, model: str | None, itm_dir: str | None) -> list[str]:
    """The folder that embedded the query, then the re-ranking one if any."""
    from ..search.store import Store

    with Store.open(db) as store:
        return [model or store.meta.model_dir] + ([itm_dir] if itm_dir else [])


def random_weights_note(folders: list[str]) -> bool:
    """Whether the query's model (or the re-ranking one) has random weights; if so the banner is printed."""
    from ..manifest import Manifest

    random_weights = any(Manifest.load(folder).random_weights for folder in folders)
    if random_weights:
        print(RANDOM_BANNER, file=sys.stderr)
    return random_weights


def unknown_text_warning(folders: list[str], text: str) -> None:
    """The warning for a query whose every token is unknown to a model that reads it."""
    from ..engine.text import TextTokenizer
    from ..manifest import Manifest
    from .common import unknown_texts_warning, warn

    for folder in dict.fromkeys(folders):
        tokenizer = TextTokenizer.from_manifest(Path(folder), Manifest.load(folder).tokenizer)
        warn(None, [unknown_texts_warning(tokenizer, folder, [text], "--text")])
