"""CPU speed of clipblip beside the strongest CPU peers, in one process: PyTorch eager, torch.compile, OpenVINO and
OpenVINO + NNCF int8, on the same weights, inputs and threads.

    python benchmarks/peers/engines.py [--quick] [--rounds 20] [--warmup 2] [--threads 2] [--pause-ms 200]
                                       [--work DIR] [--wait-idle S] [--no-freezing] [--out bench-output/peers-engines]

Models: `random:clip-base` (ViT-B/32 CLIP) and `random:blip-base` (--task caption: ViT-B/16 at 384 px), saved
once as save_pretrained checkpoints (seed 0) that every side reads: transformers loads them for eager and
torch.compile, clipblip exports its folders from them, and the OpenVINO peers read the ONNX graphs of those
folders. Weights are **random**: every figure is about speed, never about quality.

Workloads, each at batch 1 on one photo (matplotlib's grace_hopper.jpg, preprocessed once by clipblip's own
preprocessing so that every side gets the same pixels and tokens) and --threads threads:

1. CLIP image tower: pixel_values -> image embedding (projected, not normalised);
2. CLIP text tower: "a photo of a dog." -> text embedding;
3. BLIP image tower: pixel_values (384 px) -> patch tokens (577 x 768);
4. BLIP caption: the decoded photo -> 20 new tokens, greedy (min_new_tokens = max_new_tokens = 20, so every side
   generates exactly 20), the whole generate including clipblip's preprocessing on every side.

Engines, each where it can run the workload (otherwise its row says "cannot run" and why):

- PyTorch eager fp32, and eager under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
- ``torch.compile`` (inductor, freezing on unless --no-freezing) fp32 and with bf16 autocast: the tower modules,
  and for captions the vision model plus the text decoder's forward (dynamic shapes); compiled in an untimed
  first call (its seconds are recorded); skipped with --quick;
- OpenVINO f32: clipblip's fp32 ONNX graph of the tower (ONNX Runtime's fused operators included, OpenVINO reads
  them), ``INFERENCE_PRECISION_HINT f32``, ``PERFORMANCE_HINT LATENCY``, ``INFERENCE_NUM_THREADS`` --threads;
- OpenVINO + NNCF int8: ``nncf.quantize`` (ModelType.TRANSFORMER: SmoothQuant, NNCF's defaults otherwise) of the
  plain graph of an fp32 export made with ``optimize=False`` (NNCF cannot read the fused graph), calibrated on 96
  inputs: crops, flips and rescales of matplotlib's two photos, and 96 short captions and prompts, kept as a folder
  (images + texts.txt) under --work; the quantised IR is kept there too;
- clipblip fp32, int8 (calibrated on that same folder) and bf16: ``ClipEngine`` / ``BlipEngine.from_dir(folder,
  provider="auto", threads)``, towers run through ``engine.sessions[...]`` as the engine runs them, captions by
  ``generate_captions``; where "auto" ran a graph on OpenVINO, a second row runs the same folder with
  provider="cpu" (ONNX Runtime only). A table says which backend and precision each graph ran on.

Each engine's output is compared with eager fp32's: cosine of the embeddings, or whether the 20 token ids are the
same. For the towers, the multiply-accumulates of one call are counted on the eager module
(``torch.utils.flop_counter.FlopCounterMode``, MACs = FLOPs / 2) and each engine's MAC/s is given as a share of
this CPU's peak at the precision it computes in (int8 rows against the int8 peak, bf16 against bf16, the rest
fp32); the peak is cores used x the clock /proc/cpuinfo reports x MACs per cycle per core from a table chosen by
the CPU's vendor and features (assumptions, written in the results). Variants of a workload are timed
interleaved in rounds (order rotated every round, --pause-ms before each call), median and p95 over the rounds.

Exports (clip-base: 1-2 minutes each, blip-base: several), the calibration folder and the NNCF models are kept in
--work (default: a temporary folder, removed at the end); give --work DIR to reuse them between runs. --quick:
3 rounds after the untimed first call, no torch.compile: a few minutes once the exports exist. Writes results.json and
results.md into --out.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from common import (PHOTOS, cell, describe, environment, interleaved, measured_line, sample_image,  # noqa: E402
                    sample_photo, say, summarise, table, write_results)
from classify import OtherLoad, wait_for_idle  # noqa: E402  (benchmarks/peers/classify.py)
from calibration import CALIBRATION_ITEMS, CALIBRATION_TEXTS, calibration_folder  # noqa: E402  (benchmarks/)

CLIP, BLIP = "random:clip-base", "random:blip-base"
CAPTION_TOKENS = 20
PROMPT = "a photo of a dog."
EAGER = "PyTorch eager fp32"
EAGER_BF16 = "PyTorch eager bf16 autocast"
COMPILED = "torch.compile fp32"
COMPILED_BF16 = "torch.compile bf16 autocast"
OV_F32 = "OpenVINO f32"
OV_INT8 = "OpenVINO + NNCF int8"
MODULES = ("torch", "transformers", "onnxruntime", "openvino", "nncf", "numpy")



# --- what every side reads: checkpoints, the calibration folder, exports, NNCF models ---------------------------


def save_checkpoint(preset: str, task: str | None, folder: Path) -> Path:
    """``folder``: the random-weight preset (seed 0) as a save_pretrained folder (model, image processor,
    tokenizer), made unless it is there already."""
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    from clipblip.export.sources import load_source

    say(f"saving the {preset} checkpoint (random weights, seed 0) to {folder}")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    source = load_source(preset, task)
    source.model.save_pretrained(partial)
    source.image_processor.save_pretrained(partial)
    source.tokenizer.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return folder


def folder_fingerprint(folder: Path) -> str:
    """sha256 over the names and bytes of every file in ``folder`` (the calibration set)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def export_folder(checkpoint: Path, folder: Path, *, task: str | None, precision: str, optimize: bool = True,
                  calibration: Path | None = None) -> Path:
    """``folder`` exported by clipblip from ``checkpoint`` unless it holds that export already (as
    common.export_once, also matching ``optimize`` and the calibration set's fingerprint)."""
    from clipblip.errors import ClipblipError
    from clipblip.export import export_model
    from clipblip.manifest import Manifest

    stamp = folder.with_name(folder.name + ".calibration")
    wanted = folder_fingerprint(calibration) if calibration is not None else "none"
    try:
        source = Manifest.load(folder).source
        if (source.get("model") == str(checkpoint) and source.get("precision") == precision
                and task in (None, source.get("task")) and source.get("optimize", True) == optimize
                and (not stamp.is_file() and wanted == "none" or stamp.is_file() and stamp.read_text() == wanted)):
            return folder
    except ClipblipError:  # absent, or not a complete export
        pass
    say(f"exporting {checkpoint.name} --precision {precision}{' --task ' + task if task else ''}"
        f"{' --no-optimize' if not optimize else ''}{' --calibration ' + str(calibration) if calibration else ''}"
        f" to {folder}")
    started = time.perf_counter()
    stamp.unlink(missing_ok=True)
    options = {"calibration": str(calibration)} if calibration is not None else {}
    export_model(str(checkpoint), folder, task=task, precision=precision, optimize=optimize, force=folder.exists(),
                 progress=lambda message: say(f"  {message}"), **options)
    if calibration is not None:
        stamp.write_text(wanted)
    say(f"  exported in {time.perf_counter() - started:.0f} s")
    return folder


@dataclass
class Model:
    """One preset: its checkpoint, calibration set and clipblip folders (fp32, fp32 unfused, int8, bf16)."""

    preset: str
    task: str | None
    checkpoint: Path
    calibration: Path
    folders: dict[str, Path] = field(default_factory=dict)


def prepare(work: Path) -> dict[str, Model]:
    """Checkpoints, the calibration folder and every clipblip export, in ``work`` (kept where they are already)."""
    calibration = calibration_folder(work / "calibration")
    models = {}
    for key, preset, task in (("clip", CLIP, None), ("blip", BLIP, "caption")):
        name = preset.split(":", 1)[1]
        checkpoint = save_checkpoint(preset, task, work / "checkpoints" / name)
        model = Model(preset, task, checkpoint, calibration)
        for label, precision, optimize, calibrated in (("fp32", "fp32", True, False), ("plain", "fp32", False, False),
                                                       ("int8", "int8", True, True), ("bf16", "bf16", True, False)):
            model.folders[label] = export_folder(checkpoint, work / "exports" / f"{name}-{label}", task=task,
                                                 precision=precision, optimize=optimize,
                                                 calibration=calibration if calibrated else None)
        models[key] = model
    return models


def nncf_model(plain: Path, graph: str, feeds: list[dict[str, np.ndarray]], calibration: Path, cache: Path):
    """The NNCF int8 OpenVINO model of ``graph`` of the unfused fp32 folder ``plain``, calibrated on ``feeds``; kept
    as IR in ``cache`` (with a stamp of its graph, calibration set and NNCF version) and read from there next time."""
    import nncf
    import openvino as ov

    from clipblip.manifest import Manifest

    info = Manifest.load(plain).graphs[graph]
    stamp = {"graph_sha256": info.sha256, "calibration": folder_fingerprint(calibration), "items": len(feeds),
             "nncf": nncf.__version__, "openvino": ov.__version__, "call": NNCF_CALL}
    xml = cache / f"{plain.name}-{graph}.int8.xml"
    stamp_file = xml.with_suffix(".json")
    if xml.is_file() and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return ov.Core().read_model(str(xml)), None
    say(f"NNCF: quantising {plain.name}/{info.file} on {len(feeds)} calibration inputs")
    started = time.perf_counter()
    quantized = nncf.quantize(ov.convert_model(str(plain / info.file)), nncf.Dataset(feeds),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds))
    seconds = time.perf_counter() - started
    cache.mkdir(parents=True, exist_ok=True)
    stamp_file.unlink(missing_ok=True)
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    stamp_file.write_text(json.dumps(stamp))
    return quantized, seconds


NNCF_CALL = ("nncf.quantize(ov.convert_model(<unfused fp32 ONNX graph>), nncf.Dataset(feeds), "
             "model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds))")


# --- the CPU's peak ----------------------------------------------------------------------------------------------


def cpuinfo() -> tuple[str, set[str], list[float]]:
    """(vendor_id, flags, each core's "cpu MHz") as /proc/cpuinfo says; empty where it cannot be read."""
    vendor, flags, mhz = "", set(), []
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "vendor_id" and not vendor:
                vendor = value
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key == "cpu MHz":
                mhz.append(float(value))
    except (OSError, ValueError):
        pass
    return vendor, flags, mhz


def peak(threads: int) -> dict:
    """The CPU's peak multiply-accumulates per second at fp32, bf16 and int8 for ``threads`` cores: cores used x
    the reported clock x MACs per cycle per core from a table chosen by vendor and features (assumptions)."""
    from clipblip.engine.machine import this_machine, usable_cores

    machine = this_machine()
    vendor, proc_flags, mhz = cpuinfo()
    flags = set(machine.flags) | ({"avx512f"} & proc_flags)  # avx512f: /proc/cpuinfo (machine reads the int8 ones)
    avx512 = "avx512f" in flags or "avx512bw" in flags
    if vendor == "AuthenticAMD" and avx512:
        table_name = ("AMD Zen 4 (AuthenticAMD with AVX-512): AVX-512 executed on two 256-bit FMA datapaths; "
                      "fp32 16 FMA/cycle/core, bf16 (vdpbf16ps) 32, int8 (vpdpbusd) 64; a Zen 5 with full 512-bit "
                      "datapaths would double each")
        per_cycle = {"fp32": 16, "bf16": 32 if "avx512_bf16" in flags else 16,
                     "int8": 64 if "avx512_vnni" in flags else 32}
    elif avx512:
        table_name = ("AVX-512 (two 512-bit FMA units assumed): fp32 32 FMA/cycle/core, int8 128 with AVX-512 VNNI "
                      "(64 without: vpmaddubsw + vpmaddwd), bf16 64 with AVX-512 BF16 (else no bf16 instructions: "
                      "the fp32 peak); AMX int8 1024 and AMX bf16 512 where the amx flags are")
        per_cycle = {"fp32": 32, "bf16": 64 if "avx512_bf16" in flags else 32,
                     "int8": 128 if "avx512_vnni" in flags else 64}
        if "amx_int8" in flags:
            per_cycle["int8"] = 1024
        if "amx_bf16" in flags:
            per_cycle["bf16"] = 512
    elif "avx2" in flags:
        table_name = ("AVX2 only: fp32 16 FMA/cycle/core (two 256-bit FMA units), int8 32 (vpmaddubsw + vpmaddwd; 64 "
                      "with AVX-VNNI), no bf16 instructions: the bf16 peak is the fp32 peak")
        per_cycle = {"fp32": 16, "bf16": 16, "int8": 64 if "avx_vnni" in flags else 32}
    else:
        return {"known": False, "why": f"no MACs-per-cycle table for this CPU (vendor {vendor or 'unknown'}, "
                                       f"features {' '.join(sorted(flags)) or 'none read'})"}
    if not mhz:
        return {"known": False, "why": "/proc/cpuinfo gives no 'cpu MHz': no clock to compute a peak from"}
    cores = min(threads, usable_cores())
    ghz = sum(mhz) / len(mhz) / 1000
    macs = {kind: cores * ghz * 1e9 * n for kind, n in per_cycle.items()}
    how = (f"peak MAC/s = cores used ({cores}: --threads {threads}, at most the {usable_cores()} usable) x "
           f"{ghz:.3f} GHz (the mean 'cpu MHz' of /proc/cpuinfo: the nominal/reported clock, not a measured boost "
           f"clock) x MACs per cycle per core; table: {table_name}. These per-cycle figures are assumptions from the "
           f"vendors' datapath widths, not measured here.")
    return {"known": True, "vendor": vendor, "flags": sorted(flags), "cpu_class": machine.int8_kernels,
            "cores_used": cores, "ghz": ghz, "macs_per_cycle_per_core": per_cycle, "table": table_name,
            "peak_macs_per_s": macs, "how": how}


def count_macs(module, feeds: dict) -> float:
    """Multiply-accumulates of one call of the eager fp32 ``module`` on ``feeds`` (FLOPs / 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(**feeds)
    return counter.get_total_flops() / 2


# --- the engines of each workload --------------------------------------------------------------------------------


@dataclass
class Variant:
    """One engine on one workload: ``run()`` returns its output (an array, or the generated token ids); ``computes``
    the precision its peak is taken at; ``backend`` where it runs."""

    run: Callable[[], Any]
    computes: str
    backend: str


@dataclass
class Workload:
    key: str
    title: str
    what: str
    compare: str  # "cosine" (embeddings) or "tokens" (generated ids)
    variants: dict[str, Variant] = field(default_factory=dict)
    cannot: dict[str, str] = field(default_factory=dict)
    macs: float | None = None
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, make: Callable[[], Variant | None]) -> None:
        """The variant ``make()`` builds; where it raises, "cannot run" with the one-line error."""
        try:
            variant = make()
        except Exception as e:  # noqa: BLE001  an engine that cannot run this workload is reported, not fatal
            self.cannot[name] = describe(e)
            return
        if variant is not None:
            self.variants[name] = variant


def torch_towers():
    """The eager tower modules, exactly the computation of clipblip's exported tower graphs."""
    from torch import nn

    class ClipImage(nn.Module):
        """pixel_values -> projected image embedding (as clipblip's image_tower graph)."""

        def __init__(self, model):
            super().__init__()
            self.vision_model, self.visual_projection = model.vision_model, model.visual_projection

        def forward(self, pixel_values):
            return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)

    class ClipText(nn.Module):
        """input_ids, attention_mask -> projected text embedding (as clipblip's text_tower graph)."""

        def __init__(self, model):
            super().__init__()
            self.text_model, self.text_projection = model.text_model, model.text_projection

        def forward(self, input_ids, attention_mask):
            return self.text_projection(self.text_model(input_ids=input_ids,
                                                        attention_mask=attention_mask).pooler_output)

    class BlipImage(nn.Module):
        """pixel_values -> patch tokens, class token first (as clipblip's BLIP image_tower graph)."""

        def __init__(self, model):
            super().__init__()
            self.vision_model = model.vision_model

        def forward(self, pixel_values):
            return self.vision_model(pixel_values=pixel_values).last_hidden_state

    return ClipImage, ClipText, BlipImage


def torch_variant(module, feeds: dict, bf16: bool) -> Variant:
    import torch

    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = module(**feeds)
        return out.float().numpy()
    return Variant(run, "bf16" if bf16 else "fp32", "PyTorch")


def caption_variant(model, preprocess, photo, bf16: bool) -> Variant:
    """transformers' generate, greedy, exactly 20 new tokens, from the decoded photo (clipblip's preprocessing, as
    clipblip's side pays it too); returns the generated ids ([DEC] left out)."""
    import torch

    bos = model.config.text_config.bos_token_id

    def run():
        pixel_values = torch.from_numpy(preprocess([photo]))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model.generate(pixel_values=pixel_values, max_new_tokens=CAPTION_TOKENS,
                                 min_new_tokens=CAPTION_TOKENS, num_beams=1, do_sample=False)
        ids = [int(i) for i in out[0]]
        return ids[1:] if ids and ids[0] == bos else ids
    return Variant(run, "bf16" if bf16 else "fp32", "PyTorch")


def openvino_variant(compiled, feeds: dict, computes: str) -> Variant:
    """One compiled OpenVINO model: infer, then its first output copied out (as clipblip's OpenVINO graphs do)."""
    request = compiled.create_infer_request()

    def run():
        request.infer(feeds)
        return np.array(request.get_output_tensor(0).data)
    return Variant(run, computes, "OpenVINO CPU (f32)" + (", NNCF int8" if computes == "int8" else ""))


def ov_config(threads: int) -> dict:
    return {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}


def graph_runs_on(engine, graph: str) -> tuple[str, str]:
    """(the provider a clipblip graph runs on, the precision it computes in: fp32, bf16 or int8)."""
    session = engine.sessions[graph]
    provider = session.get_providers()[0]
    info = engine.manifest.graphs[graph]
    if provider.startswith("OpenVINO"):
        if info.backends.get("openvino", {}).get("weights") == "int8":
            return provider, "int8"
        return provider, "bf16" if getattr(session, "precision", "") == "bf16" else "fp32"
    return provider, "int8" if info.precision in ("int8", "int4") else "fp32"


def session_variant(engine, graph: str, feeds: dict) -> Variant:
    """A tower graph of a clipblip engine, run as the engine runs it (its result outputs, the first one kept)."""
    session = engine.sessions[graph]
    names = engine.manifest.graphs[graph].result_outputs
    provider, computes = graph_runs_on(engine, graph)
    if provider.startswith("OpenVINO") and computes == "int8":
        provider += ", NNCF int8 copy"
    return Variant(lambda: session.run(names, feeds)[0], computes, provider)


class Engines:
    """clipblip engines, opened once per (model, folder, provider) and shared by the workloads."""

    def __init__(self, models: dict[str, Model], threads: int):
        self.models, self.threads, self.opened = models, threads, {}

    def get(self, key: str, label: str, provider: str = "auto"):
        if (key, label, provider) not in self.opened:
            from clipblip.engine.blip import BlipEngine
            from clipblip.engine.clip import ClipEngine

            kind = ClipEngine if key == "clip" else BlipEngine
            started = time.perf_counter()
            try:
                self.opened[key, label, provider] = kind.from_dir(self.models[key].folders[label], provider=provider,
                                                                  threads=self.threads)
            except Exception as e:  # noqa: BLE001  remembered: every workload of this engine says why
                self.opened[key, label, provider] = e
            say(f"opened clipblip {key} {label} (provider {provider}) in {time.perf_counter() - started:.1f} s")
        engine = self.opened[key, label, provider]
        if isinstance(engine, Exception):
            raise engine
        return engine

    def graphs(self) -> list[dict]:
        """Where each graph of every engine opened ran, and in which precision (a table of the results)."""
        rows = []
        for (key, label, provider), engine in self.opened.items():
            if isinstance(engine, Exception):
                rows.append({"model": key, "folder": label, "provider": provider, "error": describe(engine)})
                continue
            graphs = {}
            for graph in sorted(engine.sessions):
                runs_on, computes = graph_runs_on(engine, graph)
                graphs[graph] = {"runs_on": runs_on, "computes": computes,
                                 "onnx_precision": engine.manifest.graphs[graph].precision}
            rows.append({"model": key, "folder": label, "provider": provider, "graphs": graphs})
        return rows


def clipblip_rows(workload: Workload, engines: Engines, key: str, make: Callable[[Any], Variant],
                  graphs: tuple[str, ...]) -> None:
    """clipblip fp32, int8 and bf16 (provider "auto"), and fp32 / int8 again on ONNX Runtime alone where "auto" ran
    one of ``graphs`` on OpenVINO."""
    for label in ("fp32", "int8", "bf16"):
        workload.add(f"clipblip {label}", lambda: make(engines.get(key, label)))
        try:
            auto = engines.get(key, label)
        except Exception:  # noqa: BLE001  already reported above
            continue
        if label != "bf16" and any(graph_runs_on(auto, g)[0].startswith("OpenVINO") for g in graphs):
            workload.add(f"clipblip {label}, ONNX Runtime", lambda: make(engines.get(key, label, "cpu")))


def build(models: dict[str, Model], engines: Engines, args, work: Path) -> tuple[list[Workload], dict]:
    """The four workloads with every engine that can run them; and the settings of the peers."""
    import openvino as ov
    import torch
    from transformers import BlipForConditionalGeneration, CLIPModel

    from clipblip.manifest import Manifest

    if not args.no_freezing:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # weights as constants: prepacked oneDNN/mkldnn kernels (CPU inference)
    core = ov.Core()
    threads, skip_compile = args.threads, args.quick
    photo = sample_image()
    settings: dict[str, Any] = {"nncf": {}, "compile": {}}

    clip_fp32 = engines.get("clip", "fp32")
    blip_fp32 = engines.get("blip", "fp32")
    clip_model = CLIPModel.from_pretrained(models["clip"].checkpoint).eval()
    blip_model = BlipForConditionalGeneration.from_pretrained(models["blip"].checkpoint).eval()
    settings["eager"] = {"clip": f"CLIPModel, attn_implementation={clip_model.config._attn_implementation}",
                         "blip": f"BlipForConditionalGeneration, attn_implementation="
                                 f"{blip_model.config._attn_implementation}",
                         "threads": f"torch.set_num_threads({threads})"}
    ClipImage, ClipText, BlipImage = torch_towers()

    clip_pixels = clip_fp32.preprocess([photo])  # (1, 3, 224, 224) float32: every side's input
    input_ids, attention_mask = clip_fp32.tokenizer([PROMPT])
    text_feeds = {k: v for k, v in (("input_ids", input_ids), ("attention_mask", attention_mask))
                  if k in clip_fp32.text_inputs}
    blip_pixels = blip_fp32.preprocess([photo])  # (1, 3, 384, 384)
    images = sorted((models["clip"].calibration / "images").glob("*.jpg"))
    towers = (
        Workload("clip_image", "CLIP image tower", f"{CLIP} (ViT-B/32), pixel_values (1, 3, 224, 224) -> image "
                 "embedding", "cosine"),
        Workload("clip_text", "CLIP text tower", f"{CLIP}, {PROMPT!r} ({input_ids.shape[1]} tokens) -> text "
                 "embedding", "cosine"),
        Workload("blip_image", "BLIP image tower", f"{BLIP} (ViT-B/16 at 384 px), pixel_values (1, 3, 384, 384) -> "
                 "577 x 768 patch tokens", "cosine"),
    )
    specs = {  # workload: (model key, graph, eager module, feeds, calibration feeds for NNCF)
        "clip_image": ("clip", "image_tower", ClipImage(clip_model).eval(), {"pixel_values": clip_pixels},
                       lambda: [{"pixel_values": clip_fp32.preprocess([str(p)])} for p in images]),
        "clip_text": ("clip", "text_tower", ClipText(clip_model).eval(), text_feeds,
                      lambda: [{k: v for k, v in zip(("input_ids", "attention_mask"), clip_fp32.tokenizer([t]))
                                if k in clip_fp32.text_inputs} for t in CALIBRATION_TEXTS]),
        "blip_image": ("blip", "image_tower", BlipImage(blip_model).eval(), {"pixel_values": blip_pixels},
                       lambda: [{"pixel_values": blip_fp32.preprocess([str(p)])} for p in images]),
    }
    for workload in towers:
        key, graph, module, feeds, calibration = specs[workload.key]
        tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
        workload.macs = count_macs(module, tensors)
        workload.add(EAGER, lambda: torch_variant(module, tensors, bf16=False))
        workload.add(EAGER_BF16, lambda: torch_variant(module, tensors, bf16=True))
        if skip_compile:
            workload.cannot[COMPILED] = workload.cannot[COMPILED_BF16] = "skipped: --quick (compilation takes minutes)"
        else:  # compiled on its first call, which measure() makes untimed
            workload.add(COMPILED, lambda: torch_variant(torch.compile(module), tensors, bf16=False))
            workload.add(COMPILED_BF16, lambda: torch_variant(torch.compile(module), tensors, bf16=True))
        folder = models[key].folders["fp32"]
        fused = folder / Manifest.load(folder).graphs[graph].file
        workload.add(OV_F32, lambda: openvino_variant(core.compile_model(str(fused), "CPU", ov_config(threads)),
                                                      feeds, "fp32"))

        def nncf_variant():
            quantized, seconds = nncf_model(models[key].folders["plain"], graph, calibration(),
                                            models[key].calibration, work / "nncf")
            settings["nncf"][workload.key] = {"quantize_s": None if seconds is None else round(seconds, 1),
                                              "reused": seconds is None}
            return openvino_variant(core.compile_model(quantized, "CPU", ov_config(threads)), feeds, "int8")
        workload.add(OV_INT8, nncf_variant)
        clipblip_rows(workload, engines, key, lambda engine: session_variant(engine, graph, feeds), (graph,))

    caption = Workload("blip_caption", "BLIP caption", f"{BLIP} --task caption: the decoded photo -> "
                       f"{CAPTION_TOKENS} new tokens, greedy (min_new_tokens = max_new_tokens = {CAPTION_TOKENS})",
                       "tokens")
    caption.add(EAGER, lambda: caption_variant(blip_model, blip_fp32.preprocess, photo, bf16=False))
    caption.add(EAGER_BF16, lambda: caption_variant(blip_model, blip_fp32.preprocess, photo, bf16=True))
    if skip_compile:
        caption.cannot[COMPILED] = caption.cannot[COMPILED_BF16] = "skipped: --quick (compilation takes minutes)"
    else:
        def compiled_caption(bf16: bool) -> Variant:
            model = BlipForConditionalGeneration.from_pretrained(models["blip"].checkpoint).eval()  # its own copy
            model.vision_model = torch.compile(model.vision_model)
            model.text_decoder.forward = torch.compile(model.text_decoder.forward, dynamic=True)
            return caption_variant(model, blip_fp32.preprocess, photo, bf16)
        caption.add(COMPILED, lambda: compiled_caption(False))
        caption.add(COMPILED_BF16, lambda: compiled_caption(True))
    why = ("a caption is a decoding loop over several graphs (image tower, cross K/V, decoder step with a "
           "KV cache); the OpenVINO peer here compiles one graph, and a whole OpenVINO generate (optimum-intel's "
           "OVModelForVision2Seq) is not installed in this environment")
    caption.cannot[OV_F32] = caption.cannot[OV_INT8] = why

    def clipblip_caption(engine) -> Variant:
        def run():
            generation = engine.generate_captions([photo], max_new_tokens=CAPTION_TOKENS, min_new_tokens=CAPTION_TOKENS,
                                                  num_beams=1, do_sample=False)[0]
            return [int(i) for i in generation.token_ids]
        on = sorted({graph_runs_on(engine, g)[0] for g in engine.sessions})
        return Variant(run, graph_runs_on(engine, "image_tower")[1], " + ".join(on))
    clipblip_rows(caption, engines, "blip", clipblip_caption, tuple(blip_fp32.sessions))

    settings["compile"] = {
        "skipped": skip_compile,
        "call": "torch.compile(tower) (mode 'default', inductor); captions: model.vision_model = "
                "torch.compile(model.vision_model), model.text_decoder.forward = "
                "torch.compile(model.text_decoder.forward, dynamic=True) on a copy of the model",
        "freezing": not args.no_freezing, "bf16": "the compiled module called under "
                                                   "torch.autocast('cpu', dtype=torch.bfloat16)",
    }
    settings["openvino"] = {"config": ov_config(threads), "f32_graph": "clipblip's fp32 (fused) ONNX graph",
                            "int8": NNCF_CALL, "calibration": f"{len(images)} images (crops, flips, rescales of "
                            f"{', '.join(PHOTOS)}) through clipblip's preprocessing / {len(CALIBRATION_TEXTS)} texts "
                            "through its tokenizer", "smoothquant": "on (ModelType.TRANSFORMER)",
                            "int8_graph": "the unfused fp32 graph of an optimize=False export"}
    settings["inputs"] = {"clip_pixels": list(clip_pixels.shape), "blip_pixels": list(blip_pixels.shape),
                          "prompt": PROMPT, "prompt_tokens": int(input_ids.shape[1])}
    return [*towers, caption], settings


# --- timing and results ------------------------------------------------------------------------------------------


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def agreement(compare: str, mine, eager) -> dict:
    """How close an engine's output is to eager fp32's: the cosine, or whether the token ids are the same."""
    if compare == "cosine":
        return {"cosine_to_eager_fp32": cosine(mine, eager)}
    same = list(mine) == list(eager)
    first = next((i for i, (x, y) in enumerate(zip(mine, eager)) if x != y), None if same else min(len(mine),
                                                                                                    len(eager)))
    return {"same_tokens_as_eager_fp32": same, "first_different_token": first, "tokens": len(mine)}


def stop_compile_workers() -> None:
    """torch.compile's pool of compile workers, which stays alive after compiling, stopped before the timed rounds
    (alive, it kept 0.95 of 2 cores busy while the CLIP towers were timed)."""
    if "torch._inductor.async_compile" in sys.modules:
        sys.modules["torch._inductor.async_compile"].shutdown_compile_workers()


def measure(workload: Workload, args, peaks: dict) -> dict:
    """Each variant's first call untimed (torch.compile compiles there: its seconds are recorded), then the variants
    interleaved in rotating rounds; latency, speed-up over eager fp32, agreement with it and share of the peak."""
    first_call: dict[str, float] = {}
    outputs: dict[str, Any] = {}
    for name, variant in list(workload.variants.items()):
        say(f"{workload.title}: first call of {name}")
        started = time.perf_counter()
        try:
            outputs[name] = variant.run()
        except Exception as e:  # noqa: BLE001
            workload.cannot[name] = describe(e)
            del workload.variants[name]
            continue
        first_call[name] = time.perf_counter() - started
    stop_compile_workers()
    say(f"{workload.title}: timing {len(workload.variants)} engines, {args.rounds} rounds")
    errors: dict[str, str] = {}
    with OtherLoad([os.getpid()]) as load:
        times = interleaved({name: v.run for name, v in workload.variants.items()}, args.rounds, warmup=args.warmup,
                            pause=args.pause_ms / 1000, order="rotate", errors=errors, results=outputs)
    workload.cannot.update(errors)
    rows = summarise(times, ratios={"ratio_to_eager_fp32": EAGER})
    for name, row in rows.items():
        variant = workload.variants[name]
        row.update(computes=variant.computes, backend=variant.backend, first_call_s=round(first_call[name], 2))
        if EAGER in outputs and name in outputs:
            row.update(agreement(workload.compare, outputs[name], outputs[EAGER]))
        if workload.macs and peaks.get("known"):
            achieved = workload.macs / (row["p50_ms"] / 1000)
            row.update(macs_per_s=achieved, peak_kind=variant.computes,
                       share_of_peak=achieved / peaks["peak_macs_per_s"][variant.computes])
    if load.result["other_processes_cores"] >= 0.25:
        workload.notes.append(f"other processes kept {load.result['other_processes_cores']} of {os.cpu_count()} "
                              "cores busy while this workload was timed: every figure of it is slowed down.")
    return {"title": workload.title, "work": workload.what, "macs_per_call": workload.macs, "rows": rows,
            "cannot_run": workload.cannot, "machine_load": load.result, "notes": workload.notes}


def best(rows: dict[str, dict], prefix: str) -> str | None:
    """The fastest row whose name is ``prefix`` or starts with ``prefix + ","``."""
    found = [name for name in rows if name == prefix or name.startswith(prefix + ",")]
    return min(found, key=lambda name: rows[name]["p50_ms"]) if found else None


LEVEL = 0.03  # a goal's ratio within 3 % of 1 is "level": this VM's p50s move by more between runs


def goals(results: dict[str, dict]) -> list[dict]:
    """clipblip's best against the peer named by each goal (ratio = peer p50 / clipblip p50: above 1 + LEVEL,
    ahead; below 1 - LEVEL, behind; else level)."""
    out = []
    for workload, ours, peer in (("clip_image", "clipblip int8", OV_INT8), ("clip_image", "clipblip fp32", OV_F32),
                                 ("clip_image", "clipblip bf16", COMPILED_BF16),
                                 ("blip_image", "clipblip int8", OV_INT8), ("blip_image", "clipblip fp32", OV_F32)):
        result = results.get(workload)
        rows = result["rows"] if result else {}
        mine = best(rows, ours)
        goal = {"workload": result["title"] if result else workload, "clipblip": ours, "peer": peer,
                "clipblip_row": mine}
        if mine is None or peer not in rows:
            missing = [n for n, row in ((ours, mine), (peer, rows.get(peer))) if row is None]
            goal["why_not"] = "; ".join(f"{n}: {(result or {}).get('cannot_run', {}).get(n, 'not measured')}"
                                        for n in missing)
        else:
            ratio = rows[peer]["p50_ms"] / rows[mine]["p50_ms"]
            goal.update(clipblip_p50_ms=rows[mine]["p50_ms"], peer_p50_ms=rows[peer]["p50_ms"], ratio=ratio,
                        verdict="ahead" if ratio >= 1 + LEVEL else "behind" if ratio <= 1 - LEVEL else "level")
        out.append(goal)
    return out


def exports_record(models: dict[str, Model]) -> dict:
    """Per clipblip folder: each graph's precision, fusion and OpenVINO copy (and its calibration), as exported."""
    from clipblip.manifest import Manifest

    out = {}
    for key, model in models.items():
        for label, folder in model.folders.items():
            manifest = Manifest.load(folder)
            graphs = {}
            for name, info in manifest.graphs.items():
                copy = info.backends.get("openvino", {})
                graphs[name] = {"precision": info.precision, "fused": (info.optimization or {}).get("fused"),
                                "openvino": {k: copy[k] for k in ("weights", "inference", "auto_on", "calibration",
                                                                  "reason") if k in copy} or None}
            out[f"{key}-{label}"] = {"folder": str(folder), "precision": manifest.source.get("precision"),
                                     "optimize": manifest.source.get("optimize"), "graphs": graphs}
    return out


def agreement_cell(row: dict) -> str:
    if "cosine_to_eager_fp32" in row:
        return f"{row['cosine_to_eager_fp32']:.5f}"
    if "same_tokens_as_eager_fp32" in row:
        if row["same_tokens_as_eager_fp32"]:
            return f"same {row['tokens']} ids"
        return f"differ from token {row['first_different_token'] + 1} of {row['tokens']}"
    return "—"


def peak_cell(row: dict) -> str:
    if "share_of_peak" not in row:
        return "—"
    return f"{100 * row['share_of_peak']:.1f} % of {row['peak_kind']} ({row['macs_per_s'] / 1e9:.0f} GMAC/s)"


def markdown(report: dict) -> str:
    env, peaks, settings = report["environment"], report["peak"], report["settings"]
    lines = [
        "# clipblip beside the strongest CPU peers", "",
        measured_line(report["date"], env, *MODULES), "",
        f"Models: {CLIP} (ViT-B/32 CLIP) and {BLIP} (--task caption, ViT-B/16 at 384 px), each saved once as a "
        "save_pretrained checkpoint that every side reads. **Weights are random: these figures are about speed, never "
        "about quality**; the cosine (or token) columns say how closely each engine computes what eager fp32 does, "
        "nothing about how good an embedding or a caption is.", "",
        f"Batch 1, one photo ({report['photo']}) preprocessed once by clipblip's preprocessing (the same pixels and "
        f"tokens on every side), {env['threads']} threads everywhere. Per workload, the engines are timed interleaved: "
        f"{report['warmup']} warm-up round(s) after an untimed first call (torch.compile compiles there), then "
        f"{report['rounds']} rounds of one call each, the order rotated every round, {report['pause_ms']:g} ms idle "
        "before each call; p50 and p95 over the rounds. \"vs eager fp32\": eager fp32's p50 over the engine's "
        "(above 1: faster).", "",
        "Engines:", "",
        f"- PyTorch eager: {settings['eager']['clip']}; {settings['eager']['blip']}; "
        f"{settings['eager']['threads']}; bf16 = the same module under `torch.autocast(\"cpu\", dtype=torch.bfloat16)`.",
        "- torch.compile: " + ("skipped (--quick)." if settings["compile"]["skipped"] else
                               f"{settings['compile']['call']}; inductor freezing "
                               f"{'on' if settings['compile']['freezing'] else 'off'}; bf16: "
                               f"{settings['compile']['bf16']}. Compiled in the untimed first call."),
        f"- OpenVINO f32: `core.compile_model(graph, \"CPU\", {settings['openvino']['config']})` on "
        f"{settings['openvino']['f32_graph']} (OpenVINO reads ONNX Runtime's fused operators).",
        f"- OpenVINO + NNCF int8: `{settings['openvino']['int8']}` on {settings['openvino']['int8_graph']}; SmoothQuant "
        f"{settings['openvino']['smoothquant']}, NNCF's defaults otherwise (clipblip's own NNCF copies add "
        f"OverflowFix.ENABLE: 7-bit weights, so that AVX2 computes the same); calibration: {settings['openvino']['calibration']} "
        f"({report['calibration']}); run with the same config as OpenVINO f32.",
        "- clipblip fp32 / int8 / bf16: `ClipEngine` / `BlipEngine.from_dir(folder, provider=\"auto\", "
        f"threads={env['threads']})` on folders exported from the same checkpoint (int8: `export_model(..., "
        "precision=\"int8\", calibration=<the calibration folder above>)`), towers run through `engine.sessions[...]` "
        "as the engine runs them, captions through `generate_captions`; \", ONNX Runtime\" rows: the same folder with "
        "provider=\"cpu\", where \"auto\" ran a graph on OpenVINO.", "",
    ]
    if peaks.get("known"):
        per = peaks["macs_per_cycle_per_core"]
        lines += [f"Peak: {peaks['how']} Here: fp32 {peaks['peak_macs_per_s']['fp32'] / 1e9:.0f}, bf16 "
                  f"{peaks['peak_macs_per_s']['bf16'] / 1e9:.0f}, int8 {peaks['peak_macs_per_s']['int8'] / 1e9:.0f} "
                  f"GMAC/s ({per['fp32']} / {per['bf16']} / {per['int8']} MACs per cycle per core). MACs per call "
                  "counted on the eager fp32 module with torch.utils.flop_counter.FlopCounterMode (MACs = FLOPs / 2); "
                  "each engine is set against the peak of the precision it computes in (int8 against int8, bf16 "
                  "against bf16, the rest fp32).", ""]
    else:
        lines += [f"Peak: not computed: {peaks['why']}.", ""]
    for number, (key, result) in enumerate(report["workloads"].items(), start=1):
        macs = f"; {result['macs_per_call'] / 1e9:.2f} GMAC per call" if result["macs_per_call"] else ""
        lines += [f"## {number}. {result['title']}", "", f"{result['work']}{macs}.", ""]
        agree = "cosine to eager fp32" if key != "blip_caption" else "tokens vs eager fp32"
        rows = [[name, cell(r["p50_ms"]), cell(r["p95_ms"]), cell(r.get("ratio_to_eager_fp32"), 2, "×"),
                 agreement_cell(r), peak_cell(r), r["backend"]] for name, r in result["rows"].items()]
        rows += [[name, "—", "—", "—", "—", "—", f"cannot run: {why}"] for name, why in result["cannot_run"].items()]
        lines += table(["engine", "p50 ms", "p95 ms", "vs eager fp32", agree, "MAC/s, % of peak", "ran on"], rows,
                       "lrrrrll")
        compiled = [f"{name} {r['first_call_s']:.0f} s" for name, r in result["rows"].items()
                    if name.startswith("torch.compile")]
        if compiled:
            lines += ["", f"First (compiling) call: {', '.join(compiled)}."]
        lines += [""] + [f"Note: {note}" for note in result["notes"]] + ([""] if result["notes"] else [])
    lines += ["## Where each clipblip graph ran", ""]
    graph_rows = []
    for entry in report["clipblip_graphs"]:
        name = f"{entry['model']} {entry['folder']} (provider {entry['provider']})"
        if "error" in entry:
            graph_rows.append([name, f"cannot open: {entry['error']}"])
        else:
            graph_rows.append([name, "; ".join(f"{g}: {v['runs_on']}, computes {v['computes']} (ONNX graph "
                                               f"{v['onnx_precision']})" for g, v in entry["graphs"].items())])
    lines += table(["folder", "graphs"], graph_rows)
    missing = [f"{name} {graph}: {g['openvino']['reason']}" for name, folder in report["exports"].items()
               for graph, g in folder["graphs"].items() if g["openvino"] and "reason" in g["openvino"]]
    if missing:
        lines += ["", "OpenVINO copies that clipblip's export did not write (that graph runs on ONNX Runtime): "
                  + "; ".join(missing) + "."]
    lines += ["", "## Goals", ""]
    goal_rows = []
    for g in report["goals"]:
        if "ratio" in g:
            goal_rows.append([g["workload"], f"{g['clipblip_row']} vs {g['peer']}", cell(g["clipblip_p50_ms"]),
                              cell(g["peer_p50_ms"]), cell(g["ratio"], 2, "×"), g["verdict"]])
        else:
            goal_rows.append([g["workload"], f"{g['clipblip']} vs {g['peer']}", "—", "—", "—",
                              f"not measured: {g['why_not']}"])
    lines += table(["workload", "clipblip vs peer", "clipblip p50 ms", "peer p50 ms", "peer p50 / clipblip p50",
                    "clipblip is"], goal_rows, "llrrrl")
    lines += ["", "\"clipblip int8\" / \"clipblip fp32\" in a goal: the faster of that precision's rows (provider "
              "auto, or ONNX Runtime alone)."]
    if report["notes"]:
        lines += [""] + [f"Note: {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds, no warm-up round but the first call, no torch.compile: checks the harness "
                             "in a few minutes")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 20, quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds after the first call (default 2, "
                                                                 "quick 0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pause-ms", type=float, default=200.0, help="idle time before each call (default 200)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep checkpoints, exports, the calibration set and NNCF models here between runs "
                             "(default: a temporary folder, removed at the end)")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="S",
                        help="before timing, wait up to S seconds for other processes to leave the CPUs (default 0)")
    parser.add_argument("--no-freezing", action="store_true",
                        help="torch.compile without inductor's freezing (weights as constants)")
    parser.add_argument("--out", type=Path, default=Path("bench-output/peers-engines"))
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.quick else 2)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for module in ("openvino", "nncf"):
        try:
            __import__(module)
        except ImportError:
            sys.exit(f"engines.py: {module} is not installed: pip install openvino nncf (make bench-peers does)")

    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clipblip-peers-engines-")))
        else:
            work = args.work.resolve()
            work.mkdir(parents=True, exist_ok=True)
        models = prepare(work)
        engines = Engines(models, args.threads)
        peaks = peak(args.threads)
        workloads, settings = build(models, engines, args, work)
        if args.wait_idle:
            wait_for_idle([os.getpid()], args.wait_idle)
        results = {w.key: measure(w, args, peaks) for w in workloads}
        exports = exports_record(models)
        clipblip_graphs = engines.graphs()
    env = environment(args.threads, *MODULES, provider="CPU")
    notes = ["--quick: few rounds and no torch.compile; figures to check the harness, not to quote."] \
        if args.quick else []
    above = [f"{w['title']}: {name}" for w in results.values() for name, row in w["rows"].items()
             if row.get("share_of_peak", 0) > 1]
    if above:
        notes.append(f"above 100 % of the computed peak ({', '.join(above)}): the cores ran faster than the clock "
                     "/proc/cpuinfo reports (boost), or the MACs-per-cycle table undercounts this CPU; the shares "
                     "compare engines with each other, not with a true ceiling.")
    report = {"date": time.strftime("%Y-%m-%d"), "environment": env, "models": {"clip": CLIP, "blip": BLIP},
              "random_weights": True, "photo": sample_photo().name, "prompt": PROMPT,
              "calibration": f"{CALIBRATION_ITEMS} images and {len(CALIBRATION_TEXTS)} texts in "
                             f"{models['clip'].calibration}", "work": str(work) if args.work else "temporary",
              "rounds": args.rounds, "warmup": args.warmup, "pause_ms": args.pause_ms, "quick": args.quick,
              "peak": peaks, "settings": settings, "workloads": results, "clipblip_graphs": clipblip_graphs,
              "goals": goals(results), "exports": exports, "notes": notes,
              "wall_s": round(time.perf_counter() - started, 1)}
    text = markdown(report)
    write_results(args.out / "results.json", report, text)
    print(text)
    return report


if __name__ == "__main__":
    main()
