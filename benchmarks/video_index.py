"""Indexing a video: seconds of video per second of wall time, decoding and embedding shown apart, and segments
per minute before and after folding.

    python benchmarks/video_index.py [--seconds 600] [--every 2] [--model random:clip-base] [--precision int8]
                                     [--threads 2] [--work DIR] [--out DIR]

The video: tools/make_videos.py's benchmark video, ``--seconds`` long, 1280x720 H.264 at 30 fps (x264 veryfast:
keyframes at most 250 frames apart, B-frames), a textured scene whose shape moves and whose colours change every
20 s. Three runs, in this process, one after another:

1. decoding alone: ``clipblip.video.sample_frames`` at one frame every ``--every`` s (what indexing decodes);
2. decoding every frame (PyAV, threaded), the floor a decoder without keyframe seeks would pay;
3. ``clipblip index`` (``index_paths``) of the video into a fresh database: its report's decode and embed seconds.

Random weights: the folding figures say how many frames a random model folds, not how a trained one would
(a trained CLIP folds a static shot the same way, and a cut less). Writes results.json and results.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

from common import cell, commit_text, environment, export_once, machine_text, say, table, write_results

ROOT = Path(__file__).resolve().parents[1]


def make_videos_module():
    spec = importlib.util.spec_from_file_location("make_videos", ROOT / "tools" / "make_videos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_videos"] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--every", type=float, default=2.0)
    parser.add_argument("--model", default="random:clip-base")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="keeps the video and the export between runs")
    parser.add_argument("--out", type=Path, default=Path("bench-output/video"))
    args = parser.parse_args()

    import av

    from clipblip.search import index_paths
    from clipblip.search.indexer import open_model
    from clipblip.video import probe, sample_frames

    work = args.work or Path(tempfile.mkdtemp(prefix="clipblip-video-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "bench-720p.mp4"
    if not path.exists() or abs(probe(path).duration - args.seconds) > 1:
        say(f"writing a {args.seconds} s 1280x720 H.264 video to {path}")
        started = time.perf_counter()
        make_videos_module().make_benchmark(work, args.seconds)
        say(f"  written in {time.perf_counter() - started:.0f} s")
    info = probe(path)
    folder = export_once(args.model, work / f"clip-{args.precision}", precision=args.precision)

    say("decoding the sampled frames")
    started = time.perf_counter()
    sampled = sum(1 for _ in sample_frames(path, args.every))
    decode_sampled = time.perf_counter() - started

    say("decoding every frame")
    started = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        every_frame = sum(1 for _ in container.decode(stream))
    decode_all = time.perf_counter() - started

    say("indexing")
    engine = open_model(folder, threads=args.threads)
    db = work / "video.db"
    db.unlink(missing_ok=True)
    started = time.perf_counter()
    report = index_paths(db, folder, [path], engine=engine, frame_every=args.every)
    wall = time.perf_counter() - started
    db.unlink(missing_ok=True)
    minutes = info.duration / 60
    env = environment(args.threads, "onnxruntime", "av", "openvino")
    result = {
        "environment": env, "video": {"path": path.name, "seconds": info.duration, "width": info.width,
                                      "height": info.height, "fps": info.fps, "codec": info.codec,
                                      "frames": every_frame},
        "model": args.model, "precision": args.precision, "every": args.every, "providers": engine.providers,
        "decode_sampled_s": decode_sampled, "sampled_frames": sampled, "decode_every_frame_s": decode_all,
        "index": {**report.to_dict(), "wall_s": wall},
        "realtime": info.duration / wall, "decode_realtime": info.duration / decode_sampled,
        "segments_per_minute": {"before": report.frames / minutes, "after": report.segments / minutes},
    }
    rows = [
        ("decode, sampled frames (clipblip.video)", cell(decode_sampled), cell(info.duration / decode_sampled), f"{sampled} frames"),
        ("decode, every frame (PyAV, threaded)", cell(decode_all), cell(info.duration / decode_all), f"{every_frame} frames"),
        ("index: decode (its report)", cell(report.decode_seconds), "", ""),
        ("index: embed (its report)", cell(report.embed_seconds), "", f"{report.frames} frames, {engine.providers}"),
        ("index, wall", cell(wall), cell(info.duration / wall, 1, "×"), f"{report.segments} segments"),
    ]
    markdown = "\n".join([
        "# Indexing a video", "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine_text(env)}, {args.threads} threads; PyAV {env.get('av')}, "
        f"onnxruntime {env.get('onnxruntime')}; clipblip {env['clipblip']} at {commit_text(env)}.", "",
        f"Video: {info.duration:.0f} s, {info.width}x{info.height} {info.codec} at {info.fps:.0f} fps "
        f"({every_frame} frames), made by tools/make_videos.py. Model: {args.model} (**random weights**), "
        f"--precision {args.precision}, one frame every {args.every:g} s.", "",
        *table(["step", "seconds", "× real time", "note"], rows, "lrrl"), "",
        f"Segments per minute of video: {report.frames / minutes:.1f} frames sampled, {report.segments / minutes:.1f} "
        f"segments after folding (cosine to the segment's first frame ≥ 0.9; random weights).",
    ])
    write_results(args.out / "results.json", result, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
