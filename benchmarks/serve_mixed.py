"""How `clipblip serve` shares 2 cores among its models' sessions, under mixed load, per threading policy.

    python benchmarks/serve_mixed.py [--policies spin-1ms,no-spin,shared] [--seconds 40] [--rounds 2]
                                     [--threads 2] [--out bench-output/serve-mixed]

One server holds int8 CLIP base, BLIP base caption and, when its folder is in bench-output/models/, BLIP base
VQA (random-weight presets: the figures say how fast, never how good). Per policy (the engine's
``CLIPBLIP_ORT_THREADING``: each session its own thread pool whose idle threads spin 1 ms, or never spin; or
ONNX Runtime's global pools shared by every session), a fresh server takes, for a fixed time and at once:
16 clients embedding one image each (the issue's workload), 2 clients captioning (20 tokens) and 2 asking
(when VQA is served). Then 16 embedding clients alone, and 1 alone. Policies alternate in rounds, so a
slow spell of the machine does not favour one. Writes results.json and results.md into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from common import measured_line, say, table, write_results  # benchmarks/common.py
from serve_load import MODELS, Server, environment, image_variants, load, model_folder

POLICIES = ("spin-1ms", "no-spin", "shared")


def bodies(model: str, route: str, images: list[str]) -> list[bytes]:
    if route == "/v1/embeddings":
        made = [{"model": model, "input": [image], "modality": "image"} for image in images]
    elif route == "/v1/caption":
        made = [{"model": model, "images": [image], "max_new_tokens": 20} for image in images]
    else:
        made = [{"model": model, "images": [image], "question": "what is in the picture?"} for image in images]
    return [json.dumps(b).encode() for b in made]


async def together(url: str, plans: list[tuple[str, str, list[bytes], int]], seconds: float) -> dict:
    """Each plan (name, route, bodies, clients) loads the server for ``seconds``, all at once."""
    runs = [load(url, route, b, "embed" if route == "/v1/embeddings" else "caption", clients, 10**9, seconds, 600)
            for _, route, b, clients in plans]
    return {name: r for (name, *_), r in zip(plans, await asyncio.gather(*runs))}


def measure(policy: str, folders: dict[str, Path], images: list[str], args, out: Path, say) -> dict:
    os.environ["CLIPBLIP_ORT_THREADING"] = policy  # the server subprocess inherits it
    server = Server(folders, argparse.Namespace(threads=args.threads, max_batch=None, batch_wait_ms=None), False,
                    out / f"server-{policy}.log")
    try:
        server.start(300)
        embed = ("embed", "/v1/embeddings", bodies("clip", "/v1/embeddings", images), 16)
        mixed = [embed, ("caption", "/v1/caption", bodies("caption", "/v1/caption", images), 2)]
        if "vqa" in folders:
            mixed.append(("vqa", "/v1/vqa", bodies("vqa", "/v1/vqa", images), 2))
        asyncio.run(together(server.url, [(n, r, b, 2) for n, r, b, _ in mixed], 5))  # warm-up
        result = {"mixed": asyncio.run(together(server.url, mixed, args.seconds)),
                  "embed_16": asyncio.run(together(server.url, [embed], args.seconds / 2))["embed"],
                  "embed_1": asyncio.run(together(server.url, [embed[:3] + (1,)], args.seconds / 2))["embed"]}
    finally:
        os.environ.pop("CLIPBLIP_ORT_THREADING", None)
        server.stop()
    say(f"{policy}: mixed " + ", ".join(f"{n} {r['requests_per_s']:.2f} req/s" for n, r in result["mixed"].items())
        + f"; embed alone 16 clients {result['embed_16']['requests_per_s']:.2f}, 1 client "
          f"{result['embed_1']['requests_per_s']:.2f} req/s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--seconds", type=float, default=40.0, help="mixed load per policy and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench-output/serve-mixed")
    args = parser.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    if not set(policies) <= set(POLICIES):
        parser.error(f"--policies: of {', '.join(POLICIES)}")

    folders = {"clip": model_folder("random:clip-base", None, say),
               "caption": model_folder("random:blip-base", "caption", say)}
    if (MODELS / "blip-base-vqa-int8" / "manifest.json").exists():
        folders["vqa"] = MODELS / "blip-base-vqa-int8"
    images = image_variants()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rounds = [{policy: measure(policy, folders, images, args, out, say) for policy in policies}
              for _ in range(args.rounds)]

    def mean(policy: str, key: str, workload: str | None = None) -> float:
        values = [r[policy][key][workload] if workload else r[policy][key] for r in rounds]
        return sum(v["requests_per_s"] for v in values) / len(values)

    workloads = list(rounds[0][policies[0]]["mixed"])
    date, env = time.strftime("%Y-%m-%d"), environment(args.threads)
    lines = [f"# Mixed load on one server, per threading policy ({date})", "",
             f"{measured_line(date, env, 'onnxruntime')} Server --threads {args.threads}; models: {', '.join(folders)} "
             f"(int8, random weights); {args.rounds} rounds, policies alternating; requests/s, mean of the rounds.", ""]
    rows = []
    for policy in policies:
        alone16, alone1 = mean(policy, "embed_16"), mean(policy, "embed_1")
        rows.append([policy, *(f"{mean(policy, 'mixed', w):.2f}" for w in workloads), f"{alone16:.2f}",
                     f"{alone1:.2f}", f"{alone16 / alone1:.2f}×"])
    lines += table(["policy", *(f"mixed: {w}" for w in workloads), "embed alone, 16 clients", "embed alone, 1 client",
                    "16 / 1"], rows)
    write_results(out / "results.json", {"date": date, "environment": env, "rounds": rounds,
                                         "folders": {k: str(v) for k, v in folders.items()}}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
