"""`clipblip serve` under load: throughput and latency at several concurrency levels, over loopback HTTP.

    python benchmarks/serve_load.py [--quick] [--levels 1,4,16,64] [--requests N] [--ray] [--clip FOLDER]
                                    [--threads 2] [--max-batch N] [--batch-wait-ms MS] [--out bench-output/serve]

Starts `clipblip serve` as a subprocess on a free 127.0.0.1 port (and, with --ray, `clipblip serve
--ray --replicas 2`), serving an int8 CLIP base folder and an int8 BLIP base caption folder
(random-weight presets with the real architectures: the figures say how fast, never how good). Then,
per workload and concurrency level, C clients (asyncio + httpx, one request in flight each) send
requests back to back until the level's fixed number of requests is sent or its time limit has passed:

* image embeddings: `POST /v1/embeddings` with one image per request;
* captions: `POST /v1/caption` with one image per request, max_new_tokens 20.

The image is matplotlib's grace_hopper.jpg photo and rotated, flipped and cropped variants of it, so
that consecutive requests differ. Warm-up requests (alone and concurrent) come first and are not
counted. Per level: requests/s and items/s (over the level's wall time), p50 and p95 latency, and the
server's `clipblip_batch_size` histogram from /metrics (scraped before and after the level), which
shows how many items each engine call took, and (single process, Linux) the server's CPU milliseconds per
answered request by stage, from /proc/PID/task: its event loop (HTTP, JSON, base64), the preparing thread
(`cb-prep`: decoding, resizing), the model worker (`cb-model`: the engine call, with ONNX Runtime's calling
thread) and the rest (ONNX Runtime's pool threads): where the time goes. The server is stopped at the end
(SIGTERM, then killed after a timeout). The clients run on the same machine as the server and take some of its CPU.

Writes results.json (with the environment) and results.md into --out, and checks the goals on int8
CLIP base image embeddings on the single-process server: throughput at concurrency 16 ≥ 1.5× that at
concurrency 1, and p95 latency at concurrency 16 < 4× p50 at concurrency 1.
`--quick` uses the tiny presets and few requests: it checks the harness only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import cell as fmt, environment as environment_record, measured_line, table, write_results  # benchmarks/

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = ROOT / "bench-output" / "models"  # exported folders are cached here (git-ignored) and reused

CAPTION_TOKENS = 20
GOAL_THROUGHPUT = 1.5  # throughput(c=16) / throughput(c=1), image embeddings, single process
GOAL_P95 = 4.0  # p95(c=16) / p50(c=1) must stay under this
RAY_REPLICAS = 2


# --- environment ---------------------------------------------------------------------------------------


LIBRARIES = ("onnxruntime", "numpy", "fastapi", "uvicorn", "httpx", "ray")  # the server's: their versions recorded


def environment(threads: int) -> dict:
    """benchmarks/common.py's record; ``threads``: the server's --threads."""
    return environment_record(threads, *LIBRARIES, provider="CPUExecutionProvider",
                              gpu="none used: the server runs on the CPU")


# --- models and images ---------------------------------------------------------------------------------

def model_folder(preset: str, task: str | None, say) -> Path:
    """The int8 export of ``preset`` under bench-output/models/, exported once and reused after."""
    from clipblip.manifest import Manifest

    name = preset.split(":", 1)[1] + (f"-{task}" if task else "") + "-int8"
    folder = MODELS / name
    try:
        manifest = Manifest.load(folder)
        if manifest.random_weights:
            say(f"reusing {folder}")
            return folder
    except Exception:  # absent, or a half-written folder: export again
        pass
    say(f"exporting {preset}{' --task ' + task if task else ''} --precision int8 → {folder} (takes minutes)")
    command = [sys.executable, "-m", "clipblip", "export", preset, "--precision", "int8", "--out", str(folder)]
    if task:
        command += ["--task", task]
    if folder.exists():
        command.append("--force")
    subprocess.run(command, check=True, cwd=ROOT)
    Manifest.load(folder)
    return folder


def image_variants() -> list[str]:
    """grace_hopper.jpg and rotated, flipped and cropped variants of it, as base64 JPEG files."""
    from matplotlib import cbook
    from PIL import Image, ImageOps

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    w, h = photo.size
    variants = [photo, photo.rotate(90, expand=True), photo.rotate(180), photo.rotate(270, expand=True),
                ImageOps.mirror(photo), photo.crop((0, 0, w * 3 // 4, h * 3 // 4)),
                photo.crop((w // 4, h // 4, w, h)), photo.rotate(15, expand=True, fillcolor=(128, 128, 128))]
    encoded = []
    for image in variants:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


# --- the server ----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`clipblip serve` in a subprocess (its own process group), its output in a log file."""

    def __init__(self, folders: dict[str, Path], args: argparse.Namespace, ray: bool, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "clipblip", "serve", *(f"{n}={f}" for n, f in folders.items()),
                        "--host", "127.0.0.1", "--port", str(self.port), "--threads", str(args.threads),
                        "--provider", "cpu"]
        if args.max_batch is not None:
            self.command += ["--max-batch", str(args.max_batch)]
        if args.batch_wait_ms is not None:
            self.command += ["--batch-wait-ms", str(args.batch_wait_ms)]
        if ray:
            self.command += ["--ray", "--replicas", str(RAY_REPLICAS)]
        self.names = list(folders)
        self.ray = ray
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def single(self) -> int | None:
        """The server's pid when it is one process (not Ray): its threads are its stages."""
        return None if self.ray or self.process is None else self.process.pid

    @property
    def group(self) -> int | None:
        return self.process.pid if self.process is not None else None  # it leads its own session

    def start(self, timeout: float) -> None:
        """Start it and wait until /health answers 200 and every model is listed; RuntimeError if not."""
        import httpx

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.exited():
                    raise RuntimeError(f"the server exited\n{self.log_tail()}")
                try:
                    if client.get("/health").status_code == 200:
                        listed = {m["id"] for m in client.get("/v1/models").json()["data"]}
                        if set(self.names) <= listed:
                            return
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                time.sleep(0.5)
        raise RuntimeError(f"the server did not become ready in {timeout:.0f} s\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def exited(self) -> bool:
        """Whether it has exited, without reaping it: its pid stays its own (and its session's id) until
        :meth:`stop` has killed what it left behind."""
        return os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def stop(self, timeout: float = 60.0) -> str:
        """SIGTERM, SIGKILL after ``timeout``; then SIGKILL to whatever it started that is still running."""
        if self.process is None or self.process.returncode is not None:
            return "not running"
        if self.exited():
            how = "had exited"
        else:
            self.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while not self.exited() and time.monotonic() < deadline:
                time.sleep(0.2)
            if self.exited():
                how = "stopped by SIGTERM"
            else:
                how = f"killed: still running {timeout:.0f} s after SIGTERM"
                self.process.kill()
                os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOWAIT)
        left = [pid for pid in session_members(self.process.pid) if pid != self.process.pid]
        for pid in left:  # what it started and left behind (Ray's processes), in its session
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.process.wait()
        return f"{how} (exit status {self.process.returncode})" + (
            f"; {len(left)} process(es) it had started were still running and were killed" if left else "")


def session_members(sid: int) -> list[int]:
    """The processes of session ``sid`` (the server's own session: it and what it started)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == sid:
                members.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return members


# --- metrics -------------------------------------------------------------------------------------------

def batch_histogram(client, model: str) -> dict:
    """The server's clipblip_batch_size histogram for ``model``: cumulative bucket counts, count, sum."""
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").text
    buckets: dict[str, float] = {}
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "clipblip_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name.endswith("_bucket"):
                buckets[sample.labels["le"]] = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return {"buckets": buckets, "count": count, "sum": total}


def histogram_delta(before: dict, after: dict) -> dict:
    """Engine calls during one level: how many, their mean size, and how many per size range."""
    calls = after["count"] - before["count"]
    items = after["sum"] - before["sum"]
    ranges, previous, below = {}, None, 0.0
    for le in sorted(after["buckets"], key=lambda b: float(b)):
        cumulative = after["buckets"][le] - before["buckets"].get(le, 0.0)
        n = cumulative - below
        if n:
            upper = "+Inf" if le == "+Inf" else str(int(float(le)))
            lower = "1" if previous is None else str(int(float(previous)) + 1)
            ranges[upper if lower == upper else f"{lower}-{upper}"] = int(n)
        below, previous = cumulative, le
    return {"engine_calls": int(calls), "items": int(items), "mean_batch": items / calls if calls else None,
            "batches": ranges}


# --- CPU accounting ------------------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_snapshot(server_group: int | None) -> dict | None:
    """CPU seconds so far: the whole machine (busy), the server's session, and this process (the
    clients). Linux only (None elsewhere). Their difference over a level is the other work on the machine."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        busy = (user + nice + system + irq + softirq + steal) / TICK
        server = 0.0
        if server_group is not None:
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    parts = stat.read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(parts[3]) == server_group:  # its session (Ray's workers too); utime, stime follow
                    server += (int(parts[11]) + int(parts[12])) / TICK
        times = os.times()
        return {"busy": busy, "server": server, "client": times.user + times.system, "at": time.perf_counter()}
    except (OSError, ValueError, IndexError):
        return None


def cpu_delta(before: dict | None, after: dict | None) -> dict | None:
    """Cores busy on average over the interval: the server, the clients, and everything else."""
    if before is None or after is None:
        return None
    wall = after["at"] - before["at"]
    used = {k: (after[k] - before[k]) / wall for k in ("busy", "server", "client")}
    return {"server_cores": used["server"], "client_cores": used["client"],
            "other_cores": max(0.0, used["busy"] - used["server"] - used["client"])}


STAGES = ("event loop", "preparing", "model worker", "ORT pool, other")


def thread_cpu(pid: int | None) -> dict[str, float] | None:
    """CPU seconds so far of the server's threads, by stage: its main thread (the event loop: HTTP, JSON,
    base64), the threads clipblip names `cb-prep ...` (decoding and resizing images) and `cb-model ...` (the
    engine call, with ONNX Runtime's calling thread), and the rest (ONNX Runtime's pool threads, Python's own).
    Linux only; None elsewhere, or for a server that is not one process."""
    if pid is None:
        return None
    seconds = dict.fromkeys(STAGES, 0.0)
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stage = ("event loop" if task.name == str(pid) else "preparing" if comm.startswith("cb-prep")
                 else "model worker" if comm.startswith("cb-model") else "ORT pool, other")
        seconds[stage] += (int(fields[11]) + int(fields[12])) / TICK
    return seconds


def stage_ms(before: dict | None, after: dict | None, requests: int) -> dict[str, float] | None:
    """Server CPU milliseconds per answered request, by stage."""
    if before is None or after is None or not requests:
        return None
    return {stage: (after[stage] - before[stage]) * 1000 / requests for stage in STAGES}


# --- load ----------------------------------------------------------------------------------------------

def request_bodies(workload: str, model: str, images: list[str]) -> tuple[str, list[bytes]]:
    if workload == "embed":
        bodies = [{"model": model, "input": [image], "modality": "image"} for image in images]
        return "/v1/embeddings", [json.dumps(b).encode() for b in bodies]
    bodies = [{"model": model, "images": [image], "max_new_tokens": CAPTION_TOKENS} for image in images]
    return "/v1/caption", [json.dumps(b).encode() for b in bodies]


def check_answer(workload: str, response) -> None:
    body = response.json()
    if workload == "embed":
        assert len(body["data"]) == 1 and len(body["data"][0]["embedding"]) > 0, body
    else:
        assert len(body["results"]) == 1 and "text" in body["results"][0], body


async def load(url: str, route: str, bodies: list[bytes], workload: str, concurrency: int, requests: int,
               seconds: float, request_timeout: float) -> dict:
    """``concurrency`` clients, back to back, until ``requests`` are sent or ``seconds`` have passed."""
    import httpx

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=request_timeout, limits=limits) as client:
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                body = bodies[sent % len(bodies)]
                sent += 1
                began = time.perf_counter()
                try:
                    response = await client.post(route, content=body, headers=headers)
                    status = str(response.status_code)
                    if response.status_code == 200:
                        check_answer(workload, response)
                        latencies.append(time.perf_counter() - began)
                except httpx.HTTPError as e:
                    status = type(e).__name__
                statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ok = len(latencies)
    return {"concurrency": concurrency, "requests_planned": requests, "requests_sent": sent, "ok": ok,
            "errors": sent - ok, "statuses": statuses, "wall_s": wall,
            "stopped_by": "count" if sent >= requests else "time limit",
            "requests_per_s": ok / wall if wall else 0.0, "items_per_s": ok / wall if wall else 0.0,
            "p50_ms": float(np.percentile(latencies, 50)) * 1000 if latencies else None,
            "p95_ms": float(np.percentile(latencies, 95)) * 1000 if latencies else None,
            "mean_ms": float(np.mean(latencies)) * 1000 if latencies else None}


def run_workload(server: Server, workload: str, model: str, images: list[str], levels: list[int], requests: int,
                 per_level_min: int, seconds: float, say) -> dict:
    import httpx

    route, bodies = request_bodies(workload, model, images)
    timeout = max(120.0, 2 * seconds)
    say(f"  warm-up: {len(bodies)} requests alone, then {len(bodies)} at once")
    asyncio.run(load(server.url, route, bodies, workload, 1, len(bodies), seconds, timeout))
    asyncio.run(load(server.url, route, bodies, workload, len(bodies), len(bodies), seconds, timeout))
    results = []
    with httpx.Client(base_url=server.url, timeout=30.0) as metrics:
        for concurrency in levels:
            planned = max(requests, per_level_min * concurrency)
            before = batch_histogram(metrics, model)
            cpu_before, threads_before = cpu_snapshot(server.group), thread_cpu(server.single)
            r = asyncio.run(load(server.url, route, bodies, workload, concurrency, planned, seconds, timeout))
            r["cpu"] = cpu_delta(cpu_before, cpu_snapshot(server.group))
            r["cpu_ms_per_request"] = stage_ms(threads_before, thread_cpu(server.single), r["ok"])
            r["batch_size"] = histogram_delta(before, batch_histogram(metrics, model))
            r["load_average_1min_after"] = os.getloadavg()[0]
            results.append(r)
            b = r["batch_size"]
            say(f"  concurrency {concurrency:>3}: {r['ok']}/{planned} ok in {r['wall_s']:.1f} s "
                f"({r['stopped_by']}), {r['requests_per_s']:.2f} req/s, p50 {fmt(r['p50_ms'])} ms, "
                f"p95 {fmt(r['p95_ms'])} ms; {b['engine_calls']} engine calls, mean batch {fmt(b['mean_batch'], 2)}"
                f" {b['batches']}" + (f"; statuses {r['statuses']}" if r["errors"] else "")
                + (f"; cores: server {r['cpu']['server_cores']:.2f}, clients {r['cpu']['client_cores']:.2f}, "
                   f"other {r['cpu']['other_cores']:.2f}" if r["cpu"] else "")
                + (f"; server CPU ms a request: {stages(r['cpu_ms_per_request'])}" if r["cpu_ms_per_request"] else ""))
    return {"route": route, "model": model, "levels": results}


CONTENDED = 0.25  # other work took at least this many cores on average during a level: flagged


def contended(level: dict) -> bool:
    return bool(level.get("cpu")) and level["cpu"]["other_cores"] >= CONTENDED


def cores(cpu: dict | None) -> str:
    if not cpu:
        return "—"
    flag = " ⚠ shared" if cpu["other_cores"] >= CONTENDED else ""
    return f"{cpu['server_cores']:.2f} / {cpu['client_cores']:.2f} / {cpu['other_cores']:.2f}{flag}"


def stages(ms: dict | None) -> str:
    if not ms:
        return "—"
    return " / ".join(f"{ms[stage]:.1f}" for stage in STAGES) + f" (= {sum(ms.values()):.1f})"


# --- goals ---------------------------------------------------------------------------------------------

def goal_checks(embed: dict | None, quick: bool) -> list[dict]:
    """Throughput(c=16) ≥ 1.5× throughput(c=1), p95(c=16) < 4× p50(c=1), on image embeddings."""
    levels = {r["concurrency"]: r for r in (embed or {}).get("levels", [])}
    note = "quick run on tiny models: not the goal's model" if quick else "int8 CLIP base, single process"
    if 1 not in levels or 16 not in levels:
        return [{"goal": "concurrency 1 and 16 measured", "result": "NOT MEASURED", "note": note}]
    one, sixteen = levels[1], levels[16]
    shared = [f"c={r['concurrency']} ({r['cpu']['other_cores']:.2f} cores)" for r in (one, sixteen) if contended(r)]
    if shared:
        note += (f"; other work shared the CPU during {' and '.join(shared)}: that level is slower than it "
                 f"would be alone")
    checks = []
    if one["requests_per_s"] and sixteen["requests_per_s"]:
        ratio = sixteen["requests_per_s"] / one["requests_per_s"]
        checks.append({"goal": f"throughput at concurrency 16 ≥ {GOAL_THROUGHPUT}× that at concurrency 1",
                       "measured": f"{sixteen['requests_per_s']:.2f} / {one['requests_per_s']:.2f} req/s",
                       "ratio": ratio, "result": "PASS" if ratio >= GOAL_THROUGHPUT else "FAIL", "note": note})
    if one["p50_ms"] and sixteen["p95_ms"]:
        ratio = sixteen["p95_ms"] / one["p50_ms"]
        checks.append({"goal": f"p95 at concurrency 16 < {GOAL_P95}× p50 at concurrency 1",
                       "measured": f"{sixteen['p95_ms']:.1f} ms / {one['p50_ms']:.1f} ms",
                       "ratio": ratio, "result": "PASS" if ratio < GOAL_P95 else "FAIL", "note": note})
    return checks


# --- report --------------------------------------------------------------------------------------------

WORKLOAD_TITLES = {"embed": "image embeddings (POST /v1/embeddings, 1 image a request)",
                   "caption": f"captions (POST /v1/caption, 1 image a request, max_new_tokens {CAPTION_TOKENS})"}


def markdown(report: dict) -> str:
    env = report["environment"]
    settings = report["server_settings"]
    lines = [f"{measured_line(report['date'], env, *(name for name in LIBRARIES if env.get(name)))} Server "
             f"`--threads {env['threads']}`, `--max-batch {settings['max_batch']}`, `--batch-wait-ms "
             f"{settings['batch_wait_ms']:g}`, {env['provider']}. 1-minute load average before the run: "
             f"{env['load_average_1min_at_start']:.2f}. Column 'cores': CPU cores busy on average during the level "
             f"(from /proc) for the server / the load clients / everything else on the machine; ⚠ shared: other work "
             f"took ≥ {CONTENDED} cores during that level, which made it slower.",
             "",
             f"Models: {report['models']} — RANDOM weights: these figures are about speed only. Load: C clients over "
             f"loopback HTTP (asyncio + httpx on the same machine), each with one request in flight, until the level's "
             f"request count is sent or {report['seconds_per_level']['embed']:g} s (embeddings) / "
             f"{report['seconds_per_level']['caption']:g} s (captions) have passed; warm-up requests first. Latency is "
             f"per request, client side; throughput is answered requests over the level's wall time (1 item a "
             f"request, so items/s = requests/s). Batch sizes: the server's `clipblip_batch_size` histogram over "
             f"the level (engine calls by items per call).", ""]
    for server_name, server in report["servers"].items():
        if "skipped" in server:
            lines += [f"### {server_name}", "", f"Not measured: {server['skipped']}", ""]
            continue
        for workload, result in server["workloads"].items():
            lines += [f"### {server_name}: {WORKLOAD_TITLES[workload]}", ""]
            lines += table(["concurrency", "requests ok / sent", "wall s", "req/s", "items/s", "p50 ms", "p95 ms",
                            "engine calls", "mean batch", "batch sizes (items: calls)",
                            "cores: server / clients / other", f"server CPU ms a request: {' / '.join(STAGES)}"], (
                [r["concurrency"], f"{r['ok']} / {r['requests_sent']}"
                 + ("" if r["stopped_by"] == "count" else " (time limit)"), fmt(r["wall_s"]),
                 fmt(r["requests_per_s"], 2), fmt(r["items_per_s"], 2), fmt(r["p50_ms"]), fmt(r["p95_ms"]),
                 r["batch_size"]["engine_calls"], fmt(r["batch_size"]["mean_batch"], 2),
                 ", ".join(f"{k}: {v}" for k, v in r["batch_size"]["batches"].items()) or "—", cores(r["cpu"]),
                 stages(r.get("cpu_ms_per_request"))]
                for r in result["levels"]))
            lines.append("")
    lines += ["### Goals (image embeddings, single process)", ""]
    lines += table(["goal", "measured", "ratio", "result"], (
        [f"{check['goal']} ({check['note']})", check.get("measured", "—"), fmt(check.get("ratio"), 2, "×"),
         f"**{check['result']}**"] for check in report["goals"]))
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------------------

def ray_problem() -> str | None:
    """Why --ray cannot run here (None if it may)."""
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install 'clipblip[ray]')"
    helptext = subprocess.run([sys.executable, "-m", "clipblip", "serve", "--help"], capture_output=True, text=True,
                              cwd=ROOT).stdout
    if "--ray" not in helptext or "--replicas" not in helptext:
        return "this clipblip's `serve` has no --ray/--replicas options"
    return None


def measure_server(name: str, folders: dict[str, Path], args: argparse.Namespace, ray: bool, out: Path,
                   plan: dict, images: list[str], say) -> dict:
    server = Server(folders, args, ray, out / f"server-{'ray' if ray else 'local'}.log")
    shown = [str(part).replace(f"{ROOT}{os.sep}", "") for part in server.command]  # paths from the repository
    say(f"{name}: {' '.join(shown)}")
    result: dict = {"command": shown}
    try:
        try:
            started = time.perf_counter()
            server.start(timeout=args.start_timeout * (3 if ray else 1))
            result["ready_after_s"] = time.perf_counter() - started
        except RuntimeError as e:
            say(f"{name}: NOT MEASURED: {e}")
            return {"command": shown, "skipped": f"the server did not start: {str(e).splitlines()[0]}"}
        say(f"{name}: ready after {result['ready_after_s']:.1f} s")
        result["workloads"] = {}
        for workload in args.workloads:
            model, requests, minimum, seconds = plan[workload]
            say(f"{name}: {workload}")
            result["workloads"][workload] = run_workload(server, workload, model, images, args.levels, requests,
                                                         minimum, seconds, say)
    finally:
        result["stopped"] = server.stop()
        say(f"{name}: server {result['stopped']}")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny presets, few requests: checks the harness only")
    parser.add_argument("--levels", default="1,4,16,64", help="concurrency levels (default 1,4,16,64)")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per level (at least 2× the concurrency; default 320 for embeddings, 32 for "
                             "captions; quick: 24 and 8)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="time limit per level (default 60 s for embeddings, 90 s for captions)")
    parser.add_argument("--workloads", default="embed,caption", help="embed, caption or both (default)")
    parser.add_argument("--ray", action="store_true",
                        help=f"also measure Ray Serve with {RAY_REPLICAS} replicas (skipped if ray is missing or "
                             f"the server does not start)")
    parser.add_argument("--no-local", action="store_true", help="skip the single-process server")
    parser.add_argument("--threads", type=int, default=2, help="the server's --threads (default 2)")
    parser.add_argument("--max-batch", type=int, default=None, help="the server's --max-batch (default: its own)")
    parser.add_argument("--batch-wait-ms", type=float, default=None,
                        help="the server's --batch-wait-ms (default: its own)")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds for the server to get ready")
    parser.add_argument("--clip", default=None,
                        help="an int8 CLIP base folder exported already (default: exported once into "
                             "bench-output/models/clip-base-int8)")
    parser.add_argument("--out", default="bench-output/serve")
    args = parser.parse_args(argv)
    args.levels = [int(c) for c in args.levels.split(",") if c.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not args.levels or min(args.levels) < 1 or not set(args.workloads) <= {"embed", "caption"} or not args.workloads:
        parser.error("--levels: positive integers; --workloads: embed and/or caption")

    from clipblip.defaults import MAX_BATCH

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    size = "tiny" if args.quick else "base"
    minimum = 1 if args.quick else 2
    embed_requests, caption_requests = (24, 8) if args.quick else (320, 32)
    if args.requests is not None:
        embed_requests = caption_requests = args.requests
    embed_seconds, caption_seconds = (args.seconds, args.seconds) if args.seconds else (60.0, 90.0)
    folders = {}
    if "embed" in args.workloads:
        folders[f"clip-{size}-int8"] = (Path(args.clip) if args.clip and not args.quick
                                        else model_folder(f"random:clip-{size}", None, say))
    if "caption" in args.workloads:
        folders[f"blip-{size}-caption-int8"] = model_folder(f"random:blip-{size}", "caption", say)
    plan = {"embed": (f"clip-{size}-int8", embed_requests, minimum, embed_seconds),
            "caption": (f"blip-{size}-caption-int8", caption_requests, minimum, caption_seconds)}
    images = image_variants()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    load_at_start = os.getloadavg()[0]
    say(f"load average (1 min) before the run: {load_at_start:.2f} on {os.cpu_count()} cores")
    servers = {}
    if not args.no_local:
        servers["single process"] = measure_server("single process", folders, args, False, out, plan, images, say)
    if args.ray:
        name = f"Ray Serve, {RAY_REPLICAS} replicas"
        problem = ray_problem()
        if problem:
            say(f"{name}: skipped: {problem}")
            servers[name] = {"skipped": problem}
        else:
            servers[name] = measure_server(name, folders, args, True, out, plan, images, say)

    local = servers.get("single process", {})
    report = {"date": time.strftime("%Y-%m-%d"), "environment": {**environment(args.threads),
                                                                  "load_average_1min_at_start": load_at_start},
              "quick": args.quick,
              "models": ", ".join(f"{name} (random:{name.split('-')[0]}-{size}"
                                  f"{' --task caption' if 'caption' in name else ''}, int8)" for name in folders),
              "random_weights": True,
              "server_settings": {"threads": args.threads,
                                  "max_batch": args.max_batch if args.max_batch is not None else MAX_BATCH,
                                  "batch_wait_ms": args.batch_wait_ms if args.batch_wait_ms is not None else 5.0},
              "levels": args.levels,
              "requests_per_level": {"embed": f"max({embed_requests}, {minimum} × concurrency)",
                                     "caption": f"max({caption_requests}, {minimum} × concurrency)"},
              "seconds_per_level": {"embed": embed_seconds, "caption": caption_seconds},
              "servers": servers,
              "goals": goal_checks(local.get("workloads", {}).get("embed"), args.quick)}
    write_results(out / "results.json", report, markdown(report))
    print(markdown(report))
    for check in report["goals"]:
        ratio = f" ratio {check['ratio']:.2f}×" if "ratio" in check else ""
        print(f"goal: {check['goal']}: {check.get('measured', '')}{ratio} → {check['result']} ({check['note']})")
    return report


if __name__ == "__main__":
    main()
