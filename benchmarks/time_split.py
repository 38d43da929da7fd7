"""Where the time of one clipblip call goes: per graph, per operator type, and what is left to Python.

    python benchmarks/time_split.py --caption DIR [--clip DIR] [--threads 2] [--repeat 5] [--out FILE.json]

For a BLIP caption folder: one photo, 20 new tokens (greedy, and 3 beams), provider "auto". Each graph's
``run`` calls are timed from the engine's side (so the sum is what the graphs cost, the rest is
preprocessing, the decode loop and numpy between steps); then ONNX Runtime's own profiler, on fresh
sessions of the same files, splits the image tower and one decoder step by operator type. For a CLIP folder:
one photo's image embedding, split the same way. Medians of --repeat calls after a warm-up, on this CPU
(named in the output). Random weights: the split is what the architecture costs, whatever the weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import environment, sample_image, write_results  # benchmarks/common.py


class Timed:
    """A session whose ``run`` calls are counted and timed; everything else passes through."""

    def __init__(self, session, totals: dict, name: str):
        self._session, self._totals, self._name = session, totals, name

    def run(self, names, feeds):
        start = time.perf_counter()
        try:
            return self._session.run(names, feeds)
        finally:
            self._totals[self._name].append(time.perf_counter() - start)

    def __getattr__(self, attribute):
        return getattr(self._session, attribute)


def split(engine, call, repeat: int) -> dict:
    """Median wall ms of ``call()`` and, per graph, median ms and runs per call; "other" is the rest."""
    totals: dict[str, list[float]] = defaultdict(list)
    originals = dict(engine.sessions)
    for name, session in originals.items():
        engine.sessions[name] = Timed(session, totals, name)
    decoder = getattr(engine, "decoder", None)
    if decoder is not None:  # the decode loop holds its own references to the step and cross K/V sessions
        decoder.step_session, decoder.cross_session = engine.sessions["decoder_step"], engine.sessions["cross_kv"]
    call()
    walls, per_graph, counts = [], defaultdict(list), defaultdict(list)
    for _ in range(repeat):
        totals.clear()
        time.sleep(0.2)
        start = time.perf_counter()
        call()
        walls.append(time.perf_counter() - start)
        for name in originals:
            per_graph[name].append(sum(totals.get(name, [])))
            counts[name].append(len(totals.get(name, [])))
    engine.sessions.update(originals)
    if decoder is not None:
        decoder.step_session, decoder.cross_session = originals["decoder_step"], originals["cross_kv"]
    wall = statistics.median(walls) * 1000
    graphs = {name: {"ms": round(statistics.median(t) * 1000, 1), "runs": int(statistics.median(counts[name]))}
              for name, t in per_graph.items()}
    return {"wall_ms": round(wall, 1), "graphs": graphs,
            "other_ms": round(wall - sum(g["ms"] for g in graphs.values()), 1)}


def operators(path: Path, feeds: dict, threads: int, repeat: int) -> dict:
    """ONNX Runtime's profile of ``repeat`` runs of one graph: ms per run by operator type, largest first."""
    import onnxruntime as ort

    from clipblip.engine.session import session_options

    options = session_options(threads)
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
        for _ in range(repeat):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_type: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_type[event["args"]["op_name"]] += event["dur"] / 1000 / (repeat + 1)
    total = sum(by_type.values())
    return {"total_ms": round(total, 2),
            "by_operator": {op: {"ms": round(ms, 2), "share": round(ms / total, 3)}
                            for op, ms in sorted(by_type.items(), key=lambda item: -item[1])[:8]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caption", type=Path, required=True, help="a BLIP caption folder (int8, say)")
    parser.add_argument("--clip", type=Path, default=None, help="a CLIP folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from clipblip.engine import BlipEngine, ClipEngine

    photo = sample_image()
    report = {"date": time.strftime("%Y-%m-%d"), "environment": environment(args.threads, "onnxruntime", "openvino")}
    blip = BlipEngine.from_dir(args.caption, provider="auto", threads=args.threads)
    report["caption"] = {"folder": str(args.caption), "precision": blip.precision,
                         "backends": {n: s.get_providers()[0] for n, s in blip.sessions.items()},
                         "greedy, 20 tokens": split(blip, lambda: blip.caption([photo], max_new_tokens=20),
                                                    args.repeat),
                         "3 beams, 20 tokens": split(blip, lambda: blip.caption([photo], max_new_tokens=20,
                                                                                 num_beams=3), args.repeat)}
    start = time.perf_counter()
    for _ in range(args.repeat):
        pixels = blip.preprocess([photo])
    report["caption"]["preprocessing_ms"] = round((time.perf_counter() - start) / args.repeat * 1000, 1)
    embeds = blip.image_embeds([photo])
    tower = args.caption / blip.manifest.graphs["image_tower"].file
    report["caption"]["image_tower_operators"] = operators(tower, {"pixel_values": pixels}, args.threads, 3)
    cross = blip.decoder.cross(embeds)
    step = args.caption / blip.manifest.graphs["decoder_step"].file
    dims = blip.manifest.model["decoder"]
    past = np.zeros((1, dims["heads"], 10, dims["head_dim"]), np.float32)
    feeds = {"input_ids": np.array([[1000]], np.int64), **{n: past for n in blip.decoder.past_names},
             **dict(zip(blip.decoder.cross_names, cross))}
    report["caption"]["decoder_step_operators (past 10)"] = operators(step, feeds, args.threads, 20)
    if args.clip:
        clip = ClipEngine.from_dir(args.clip, provider="auto", threads=args.threads)
        report["clip image"] = {"folder": str(args.clip), "precision": clip.precision,
                                "batch 1": split(clip, lambda: clip.embed_images([photo]), args.repeat * 4)}
        pixels = clip.preprocess([photo])
        report["clip image"]["image_tower_operators"] = operators(args.clip / clip.manifest.graphs["image_tower"].file,
                                                                  {"pixel_values": pixels}, args.threads, 10)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if args.out:
        write_results(args.out, report)


if __name__ == "__main__":
    main()
