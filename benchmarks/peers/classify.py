"""Zero-shot classification side by side: transformers eager, optimum-onnx and clipblip, in one run.

    make peers-venv                                   # once: optimum-onnx in its own .venv-peers
    python benchmarks/peers/classify.py [--quick] [--rounds 12] [--threads 2] [--per-channel] [--wait-idle S]
                                        [--out bench-output/peers]

One photo (matplotlib's grace_hopper.jpg) and three labels (cat, dog, car, template "a photo of a {}.")
through each side's whole user-visible path, with the same random weights (a save_pretrained checkpoint
of `random:clip-base` = ViT-B/32, made here and read by every side), the same threads and the CPU
provider:

- transformers eager fp32: CLIPProcessor -> CLIPModel -> softmax of logits_per_image (this process);
- optimum-onnx fp32 / int8: `ORTModelForZeroShotImageClassification` exported from the checkpoint and
  optimum's own dynamic quantization recipe for this CPU (avx512_vnni on VNNI/AMX, avx512 on AVX-512 without
  VNNI, avx2, arm64; from clipblip's CPUID reading), in a worker under .venv-peers/bin/python
  (optimum-onnx pins transformers < 4.58), timing each call itself (benchmarks/peers/optimum_worker.py);
- clipblip fp32 / int8: `export_model(checkpoint)` then `ClipEngine.classify`; its text embeddings are
  cached by exact text, so the "labels not cached" variants clear `engine.text_cache` before each call
  (outside the timed part) and pay the text tower every time, as the other sides do.

After a warm-up, the variants are timed interleaved in rounds (one call of each per round, the order
rotated every round, a pause of --pause-ms (200) before each call so that no thread pool still spins into
the next call: ONNX Runtime's and PyTorch's pools, in this process and in the worker); median and p95 over
the rounds, speed-up over eager fp32 from the same run. Each variant's probabilities are recorded with their
largest difference from eager's. Writes results.json and results.md into --out. Weights are random: the
figures are about speed, never about quality.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
from common import (SelfTimed, commit_text, environment, interleaved, machine_text, sample_photo,  # noqa: E402
                    say, summarise, table, write_results)  # benchmarks/common.py

PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"


def optimum_recipe() -> str:
    """optimum's AutoQuantizationConfig for this CPU class (clipblip.engine.machine reads CPUID)."""
    from clipblip.engine.machine import this_machine

    return {"amx": "avx512_vnni", "vnni": "avx512_vnni", "avx512bw": "avx512", "avx2": "avx2",
            "neon": "arm64"}.get(this_machine().int8_kernels, "avx2")


WORKER = HERE / "optimum_worker.py"
LABELS = ("cat", "dog", "car")
TEMPLATE = "a photo of a {}."
EAGER = "transformers eager fp32"


class OptimumWorker:
    """The optimum-onnx side: a long-lived process in the peers venv, one JSON request/answer a line."""

    def __init__(self, python: Path, checkpoint: Path, workdir: Path, photo: Path, threads: int, per_channel: bool,
                 log: Path):
        self.log_path = log
        self.log = open(log, "w", encoding="utf-8")
        command = ([str(python), str(WORKER), "--checkpoint", str(checkpoint), "--workdir", str(workdir),
                    "--photo", str(photo), "--threads", str(threads), "--recipe", optimum_recipe()]
                   + (["--per-channel"] if per_channel else []))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "PYTHONNOUSERSITE": "1"}
        env.pop("PYTHONPATH", None)  # nothing of ours may leak into the peer's interpreter
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True, bufsize=1, env=env, cwd=workdir)
        self.info: dict | None = None

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise RuntimeError(f"the optimum-onnx worker stopped (exit {self.process.returncode}); "
                               f"last lines of {self.log_path}:\n{self.tail()}")
        return json.loads(line)

    def tail(self, lines: int = 25) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def wait_ready(self) -> dict:
        answer = self._read()
        if not answer.get("ready"):
            raise RuntimeError(f"the optimum-onnx worker failed to set up: {answer.get('error')}\n{self.tail()}")
        self.info = answer["info"]
        return self.info

    def run(self, variant: str, prompts: list[str]) -> SelfTimed:
        """One call in the worker: the seconds it measured there (no pipe in them) and its probabilities."""
        self.process.stdin.write(json.dumps({"op": "run", "variant": variant, "prompts": prompts}) + "\n")
        self.process.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"optimum-onnx worker: {answer['error']}\n{self.tail()}")
        return SelfTimed(answer["ms"] / 1000, [float(p) for p in answer["probs"]])

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.log.close()


def save_checkpoint(preset: str, folder: Path) -> None:
    """The random-weight model, its image processor and tokenizer as one save_pretrained folder."""
    from clipblip.export.sources import load_source

    source = load_source(preset)
    source.model.save_pretrained(folder)
    source.image_processor.save_pretrained(folder)
    source.tokenizer.save_pretrained(folder)


def timed(fn: Callable[[], list[float]], prepare: Callable[[], None] | None = None) -> Callable[[], SelfTimed]:
    """A variant run in this process: ``prepare()`` untimed, then ``fn()`` (label-order probabilities) timed."""
    def call() -> SelfTimed:
        if prepare:
            prepare()
        start = time.perf_counter()
        probs = fn()
        return SelfTimed(time.perf_counter() - start, [float(p) for p in probs])
    return call


def variants(checkpoint: Path, folders: dict[str, Path], worker: OptimumWorker, threads: int, photo_path: Path,
             per_channel: bool) -> tuple[dict[str, Callable[[], SelfTimed]], list[str], str]:
    import torch
    from PIL import Image
    from transformers import AutoProcessor, CLIPModel

    from clipblip.engine import ClipEngine

    photo = Image.open(photo_path).convert("RGB")
    photo.load()
    prompts = [TEMPLATE.format(label) for label in LABELS]
    notes = []

    model = CLIPModel.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)

    def eager() -> list[float]:
        with torch.inference_mode():
            inputs = processor(text=prompts, images=photo, padding=True, return_tensors="pt")
            return model(**inputs).logits_per_image.softmax(dim=-1)[0].tolist()

    def clipblip(engine) -> Callable[[], list[float]]:
        def classify() -> list[float]:
            ranked = dict(engine.classify([photo], list(LABELS), template=TEMPLATE)[0])
            return [ranked[label] for label in LABELS]
        return classify

    engines = {p: ClipEngine.from_dir(folders[p], provider="auto", threads=threads) for p in ("fp32", "int8")}
    int8_name = f"optimum-onnx int8 ({optimum_recipe()} dynamic{', per-channel' if per_channel else ''})"
    out = {
        EAGER: timed(eager),
        "optimum-onnx fp32": lambda: worker.run("fp32", prompts),
        int8_name: lambda: worker.run("int8", prompts),
        "clipblip fp32": timed(clipblip(engines["fp32"])),
        "clipblip int8": timed(clipblip(engines["int8"])),
    }
    if all(hasattr(e, "text_cache") for e in engines.values()):
        for p in ("fp32", "int8"):
            out[f"clipblip {p}, labels not cached"] = timed(clipblip(engines[p]), engines[p].text_cache.clear)
    else:
        notes.append("ClipEngine has no text_cache in this checkout: the 'labels not cached' variants were skipped "
                     "(clipblip fp32/int8 then compute the text tower on every call anyway).")
    eager_processor = (f"{type(processor).__name__}: {type(processor.image_processor).__name__} + "
                       f"{type(processor.tokenizer).__name__} (AutoProcessor defaults)")
    return out, notes, eager_processor


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(seconds of CPU busy on the whole machine, seconds of CPU used by ``pids``) so far, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait
        own = 0
        for pid in pids:
            stat = Path(f"/proc/{pid}/stat").read_text()
            own += sum(int(x) for x in stat.rsplit(")", 1)[1].split()[11:15])  # utime stime cutime cstime
        return busy / tick, own / tick
    except (OSError, ValueError, IndexError):
        return float("nan"), float("nan")


class OtherLoad:
    """How many cores other processes kept busy while the variants were timed (they slow every variant)."""

    def __init__(self, pids: list[int]):
        self.pids = pids

    def __enter__(self):
        self.start, self.load_start = time.perf_counter(), os.getloadavg()[0]
        self.busy, self.own = cpu_seconds(self.pids)
        return self

    def __exit__(self, *exc):
        busy, own = cpu_seconds(self.pids)
        elapsed = time.perf_counter() - self.start
        self.result = {"other_processes_cores": round(max(0.0, (busy - self.busy) - (own - self.own)) / elapsed, 2),
                       "loadavg_1min_before": round(self.load_start, 2),
                       "loadavg_1min_after": round(os.getloadavg()[0], 2), "timing_s": round(elapsed, 1)}


def wait_for_idle(pids: list[int], limit_s: float, window_s: float = 3.0) -> float:
    """Wait (at most ``limit_s``) until other processes use < 0.25 cores over ``window_s``; their last load."""
    deadline, others = time.perf_counter() + limit_s, float("nan")
    while True:
        busy, own = cpu_seconds(pids)
        time.sleep(window_s)
        busy2, own2 = cpu_seconds(pids)
        others = max(0.0, (busy2 - busy) - (own2 - own)) / window_s
        if others < 0.25 or time.perf_counter() >= deadline:
            return others
        say(f"waiting for an idle machine: other processes use {others:.2f} cores")


def latency_and_answers(times: dict[str, list[float]], probs: dict[str, list[float]]) -> dict[str, dict]:
    """Per variant: its latency, the ratio to eager's p50, and its last probabilities against eager's."""
    out = summarise(times, ratios={"ratio_to_eager_fp32": EAGER})
    eager = np.array(probs[EAGER])
    for name, row in out.items():
        mine = np.array(probs[name])
        row.update({"top_label": LABELS[int(mine.argmax())], "probs": dict(zip(LABELS, map(float, mine))),
                    "max_abs_prob_diff_vs_eager": float(np.abs(mine - eager).max())})
    return out


def comparisons(latency: dict[str, dict]) -> list[dict]:
    """clipblip against optimum-onnx at the same precision (speed-up = optimum p50 / clipblip p50)."""
    int8_peer = next(name for name in latency if name.startswith("optimum-onnx int8"))
    rows = []
    for ours, peer in (("clipblip fp32", "optimum-onnx fp32"),
                       ("clipblip fp32, labels not cached", "optimum-onnx fp32"),
                       ("clipblip int8", int8_peer), ("clipblip int8, labels not cached", int8_peer)):
        if ours in latency:
            speedup = latency[peer]["p50_ms"] / latency[ours]["p50_ms"]
            rows.append({"clipblip": ours, "optimum-onnx": peer, "clipblip_p50_ms": latency[ours]["p50_ms"],
                         "optimum_p50_ms": latency[peer]["p50_ms"], "speedup_over_optimum": speedup,
                         "ahead": speedup > 1.0})
    return rows


def clipblip_exports(folders: dict[str, Path]) -> dict:
    from clipblip.manifest import Manifest

    out = {}
    for precision, folder in folders.items():
        manifest = Manifest.load(folder)
        out[precision] = {name: {"precision": g.precision, "mb": round((folder / g.file).stat().st_size / 2**20, 1),
                                 "fused": g.optimization.get("fused") if isinstance(g.optimization, dict) else None}
                          for name, g in manifest.graphs.items()}
    return out


def markdown(report: dict) -> str:
    env, peer = report["environment"], report["environment"]["peer"]
    lines = [
        f"Zero-shot classification, measured {report['date']} on {machine_text(env)}, {env['threads']} threads, "
        f"{env['provider']}. Model: {report['model']} with **random weights** (speed only, never quality), one "
        f"save_pretrained checkpoint read by every side. Work: {report['work']}. Median (p50) and p95 of "
        f"{report['rounds']} interleaved rounds after {report['warmup']} warm-up round(s); other processes kept "
        f"{report['machine_load']['other_processes_cores']} cores busy meanwhile.", "",
        f"- ours (this venv): clipblip {env['clipblip']} at {commit_text(env)}, onnxruntime "
        f"{env['onnxruntime']}, torch {env['torch']}, transformers {env['transformers']}; eager's processor: "
        f"{env['eager_processor']}",
        f"- peer (.venv-peers): optimum-onnx {peer['optimum-onnx']} (optimum {peer['optimum']}), onnxruntime "
        f"{peer['onnxruntime']}, torch {peer['torch']}, transformers {peer['transformers']}; int8 = "
        f"`{peer['quantization']['call']}` ({peer['quantization']['format']}/{peer['quantization']['mode']}, "
        f"weights {peer['quantization']['weights_dtype']}, activations {peer['quantization']['activations_dtype']}); "
        f"processor: {peer['processor']}",
        ""]
    lines += table(["variant", "p50 ms", "p95 ms", "× eager fp32", "top label", "probabilities (cat / dog / car)",
                    "max abs Δp vs eager"], (
        [name, f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['ratio_to_eager_fp32']:.2f}×", r["top_label"],
         " / ".join(f"{p:.4f}" for p in r["probs"].values()), f"{r['max_abs_prob_diff_vs_eager']:.1e}"]
        for name, r in report["latency"].items()))
    lines += [""] + table(["clipblip", "optimum-onnx", "clipblip p50 ms", "optimum p50 ms", "speed-up over optimum",
                           "ahead"], (
        [c["clipblip"], c["optimum-onnx"], f"{c['clipblip_p50_ms']:.1f}", f"{c['optimum_p50_ms']:.1f}",
         f"{c['speedup_over_optimum']:.2f}×", "yes" if c["ahead"] else "no"] for c in report["versus_optimum"]))
    if report["notes"]:
        lines += [""] + [f"Note: {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="random:clip-tiny, 2 rounds: checks the harness only")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 12, quick 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pause-ms", type=float, default=200.0, help="idle time before each call (default 200)")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="S",
                        help="before timing, wait up to S seconds for other processes to leave the CPUs (default 0)")
    parser.add_argument("--per-channel", action="store_true",
                        help="optimum int8 with per-channel weights (optimum's documented recipe is per-tensor)")
    parser.add_argument("--peers-python", type=Path, default=PEERS_PYTHON, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("bench-output/peers"))
    args = parser.parse_args(argv)
    if not args.peers_python.exists():
        sys.exit(f"classify.py: {args.peers_python} not found: run `make peers-venv` first "
                 "(optimum-onnx lives in its own virtual environment)")
    preset, rounds = ("random:clip-tiny", args.rounds or 2) if args.quick else ("random:clip-base", args.rounds or 12)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from clipblip.export import export_model

    torch.set_num_threads(args.threads)
    photo = sample_photo()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clipblip-peers-") as tmp:
        tmp = Path(tmp)
        checkpoint = tmp / "checkpoint"
        say(f"saving the {preset} checkpoint (random weights)")
        save_checkpoint(preset, checkpoint)
        say("starting the optimum-onnx worker (export + int8 quantization)")
        (tmp / "peer").mkdir()
        worker = OptimumWorker(args.peers_python, checkpoint, tmp / "peer", photo, args.threads, args.per_channel,
                               args.out / "optimum_worker.log")
        try:
            folders = {}
            for precision in ("fp32", "int8"):
                say(f"exporting clipblip {precision} from the checkpoint")
                folders[precision] = tmp / f"clipblip-{precision}"
                export_model(str(checkpoint), folders[precision], precision=precision)
            peer = worker.wait_ready()
            fns, notes, eager_processor = variants(checkpoint, folders, worker, args.threads, photo, args.per_channel)
            say(f"timing {len(fns)} variants, {rounds} rounds")
            if args.wait_idle:
                wait_for_idle([os.getpid(), worker.process.pid], args.wait_idle)
            probs: dict[str, list[float]] = {}  # each variant's last answer
            with OtherLoad([os.getpid(), worker.process.pid]) as load:
                times = interleaved(fns, rounds, warmup=args.warmup, pause=args.pause_ms / 1000, order="rotate",
                                    results=probs)
            if load.result["other_processes_cores"] >= 0.25:
                notes.append(f"other processes kept {load.result['other_processes_cores']} of {os.cpu_count()} cores "
                             "busy while the variants were timed: every figure here is slowed down; rerun on an idle "
                             "machine for figures to quote.")
            exports = {"clipblip": clipblip_exports(folders),
                       "optimum-onnx": {"files": peer["files"], "export_s": peer["export_s"],
                                        "quantize_s": peer["quantize_s"]}}
        finally:
            worker.close()
    latency = latency_and_answers(times, probs)
    env = environment(args.threads, "onnxruntime", "numpy", "torch", "transformers", "tokenizers",
                      provider="CPUExecutionProvider", eager_processor=eager_processor, peer=peer)
    report = {"date": time.strftime("%Y-%m-%d"), "environment": env,
              "model": preset, "random_weights": True, "photo": photo.name, "labels": list(LABELS),
              "template": TEMPLATE,
              "work": f"1 photo ({photo.name}) × {len(LABELS)} labels ({', '.join(LABELS)}; \"{TEMPLATE}\"), "
                      "processor → model → softmax on every side",
              "rounds": rounds, "warmup": args.warmup, "pause_ms": args.pause_ms, "machine_load": load.result,
              "latency": latency, "versus_optimum": comparisons(latency), "exports": exports, "notes": notes,
              "wall_s": round(time.perf_counter() - started, 1)}
    write_results(args.out / "results.json", report, markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
