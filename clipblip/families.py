"""The model families clipblip exports and runs, described once (stdlib only).

Each :class:`Family` names its presets, the tasks an exported folder can do (with the graphs the
engine opens for each), the module that exports it and the engine class that runs it. Export, the
engine and the CLI read this registry; adding a family or a task is one entry here plus its
exporter and engine code. The modules are named by dotted path and imported only on request, so
this module never pulls in torch, transformers, onnx or onnxruntime.

An exporter module (``Family.exporter``) offers the same four functions for every family::

    load_pretrained(ref, task, architectures, local_only, allow_pickle) -> SourceModel
    build_random(preset, task) -> SourceModel
    graph_specs(source, attentions=False) -> list[GraphSpec]
    manifest_sections(source) -> dict   # tasks, image, tokenizer, model
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

__all__ = [
    "RANDOM_PREFIX", "Task", "Preset", "Family", "FAMILIES",
    "family", "by_model_type", "model_types", "preset", "preset_names", "export_task", "export_tasks",
    "task_graphs", "export_hint", "family_of_task", "title", "load_exporter", "load_engine_class", "by_reference",
    "TOWERS", "BOTH", "tower_tasks",
]

RANDOM_PREFIX = "random:"
TOWERS = ("image", "text")  # the towers of a dual encoder, each the graph "<tower>_tower"
BOTH = "both"  # `clipblip export --towers both`: every tower


@dataclass(frozen=True)
class Task:
    """One thing an exported folder can do.

    ``name`` is the engine task recorded in the manifest's ``tasks``; ``export_task`` the value of
    ``clipblip export --task`` that produces it (None: the family has a single export, no --task);
    ``model_class`` the transformers class that loads such a checkpoint; ``graphs`` the graphs the
    engine opens for the task; ``example`` a Hub checkpoint of this kind; ``max_new_tokens`` the
    default generation length of a generative task; ``one_tower`` whether a folder holding one tower alone
    (``export --towers image|text``) still does the task, with that tower (embed: each tower embeds its own
    modality; similarity needs both).
    """

    name: str
    export_task: str | None
    model_class: str
    graphs: tuple[str, ...]
    example: str
    max_new_tokens: int | None = None
    one_tower: bool = False


@dataclass(frozen=True)
class Preset:
    """A random-weight model (``random:<name>``): the transformers config kwargs of a real architecture."""

    name: str
    description: str
    config: dict[str, Any] = field(hash=False)
    default_task: str | None = None  # the export task when --task is not given


@dataclass(frozen=True)
class OpenVinoCopy:
    """How an export of one precision writes a graph for OpenVINO, and where provider "auto" runs it."""

    weights: str  # "fp32", "fp16", or "int8" (NNCF's post-training quantisation, activation ranges calibrated)
    inference: str  # OpenVINO's precision hint: "f32", "bf16", or "native" (bf16 where the CPU computes it, else f32)
    # the CPU classes (machine.Machine.int8_kernels) where it was measured faster than ONNX Runtime; "bf16":
    # wherever OpenVINO says the CPU computes bf16 (the only fast path of a bf16 folder)
    auto_on: tuple[str, ...]

    @property
    def lossy(self) -> bool:
        """Whether its answers differ from fp32's by more than rounding (gated by cosine, not max difference)."""
        return (self.weights, self.inference) != ("fp32", "f32")


@dataclass(frozen=True)
class Family:
    """A model family: manifest ``family``, checkpoint ``model_type``, its exporter, engine, tasks and presets."""

    name: str
    title: str  # as people write it: "Chinese-CLIP"
    model_type: str
    exporter: str  # module path
    engine: str  # "module:Class"
    tasks: tuple[Task, ...]
    presets: tuple[Preset, ...]
    # graphs that OpenVINO runs faster than ONNX Runtime on some CPUs: an export of a precision in
    # ``openvino_copies`` writes each a copy for it, which provider "auto" runs where that copy says
    openvino_graphs: tuple[str, ...] = ()
    openvino_copies: dict[str, OpenVinoCopy] = field(default_factory=dict, hash=False)
    # zero-shot classification (families with a classify task): how logit_scale · cosine becomes a probability
    # ("softmax" over the labels, or "sigmoid": each label on its own, with the model's logit_bias), and the
    # default prompt, in the language the model was trained on; both written into the manifest at export
    scoring: str | None = None
    prompt_template: str | None = None
    # how `clipblip export MODEL` recognises this family's checkpoints when not by config.json's model_type: a
    # folder holding ``checkpoint_file`` (and no config.json), or a MODEL starting with one of ``ref_prefixes``
    checkpoint_file: str | None = None
    ref_prefixes: tuple[str, ...] = ()
    # packages its exporter needs beyond the `export` extra, and the extra that installs them
    export_needs: tuple[str, ...] = ()

    @property
    def export_tasks(self) -> list[str]:
        """The ``--task`` values this family takes, in order (empty: one export, no --task)."""
        return list(dict.fromkeys(t.export_task for t in self.tasks if t.export_task is not None))

    def tasks_of(self, export_task: str | None) -> list[Task]:
        """The tasks one export gives (the manifest's ``tasks``); every task if the family has no --task."""
        if not self.export_tasks:
            return list(self.tasks)
        return [t for t in self.tasks if t.export_task == export_task]

    @property
    def towers(self) -> dict[str, str]:
        """The towers a folder may hold alone (``export --towers``), each with its graph: ``{"image": "image_tower",
        "text": "text_tower"}`` for a family whose tasks run on these two graphs and no other (a dual encoder);
        empty where a task needs more (BLIP's need both sides together)."""
        graphs = {tower: f"{tower}_tower" for tower in TOWERS}
        return graphs if {g for t in self.tasks for g in t.graphs} == set(graphs.values()) else {}

    def model_class(self, export_task: str | None) -> str:
        """The transformers class of a checkpoint for ``export_task``."""
        tasks = self.tasks_of(export_task)
        if not tasks:
            raise KeyError(f"{self.name} has no export task {export_task!r} (has: {', '.join(self.export_tasks)})")
        return tasks[0].model_class


_DUAL_GRAPHS = ("image_tower", "text_tower")

# Both towers of a dual encoder, on the AMD EPYC Zen 4 (AVX-512 VNNI and BF16, no AMX), 2 threads, ViT-B/32
# (docs/speed.md, "OpenVINO copies"): OpenVINO f32 ahead of ONNX Runtime's fused fp32, NNCF's calibrated int8 ahead of
# ONNX Runtime's dynamic int8, and bf16 the fastest of all where the CPU computes it. Not measured on AVX2 or AMX
# machines (none lent to this work): ONNX Runtime there.
_DUAL_ENCODER_COPIES = {
    # fp32: not by `auto` (only --provider openvino): its memory grew 55-119 MB over a 2,000-call soak of varied
    # shapes (tests/engine/test_runtime_faults.py), where ONNX Runtime's stays under 40 MB
    "fp32": OpenVinoCopy("fp32", "f32", ()),
    "int8": OpenVinoCopy("int8", "f32", ("vnni",)),
    "bf16": OpenVinoCopy("fp32", "bf16", ("bf16",)),
}


# the SentencePiece ids of SigLIP's tokenizer (transformers' defaults, 49406/49407, are CLIP's, outside its vocabulary)
_SIGLIP_TEXT_IDS = {"vocab_size": 32000, "pad_token_id": 1, "eos_token_id": 1, "bos_token_id": None}


def _tiny_towers(text: dict | None = None, **model: Any) -> dict[str, Any]:
    """Config kwargs of a test preset: 2-layer, 32-wide towers on 32x32 images in 8-pixel patches."""
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    return {"text_config": {**layers, **(text or {})},
            "vision_config": {**layers, "image_size": 32, "patch_size": 8}, **model}


def _dual_encoder_tasks(model_class: str, example: str) -> tuple[Task, ...]:
    """embed, similarity and classify: what every CLIP-like family does with its two towers (embed with either
    one alone)."""
    return tuple(Task(name, None, model_class, _DUAL_GRAPHS, example, one_tower=name == "embed")
                 for name in ("embed", "similarity", "classify"))


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(
        name="clip",
        title="CLIP",
        model_type="clip",
        exporter="clipblip.export.clip",
        engine="clipblip.engine.clip:ClipEngine",
        tasks=_dual_encoder_tasks("CLIPModel", "openai/clip-vit-base-patch32"),
        openvino_graphs=_DUAL_GRAPHS,
        openvino_copies=_DUAL_ENCODER_COPIES,
        scoring="softmax",
        prompt_template="a photo of a {}.",
        presets=(
            Preset("clip-base", "ViT-B/32 with the 12-layer 512-wide text tower: openai/clip-vit-base-patch32's "
                                "architecture", {}),
            Preset("clip-tiny", "2-layer, 32-wide towers on 32x32 images: for tests", _tiny_towers(projection_dim=16)),
        ),
    ),
    Family(
        name="chinese_clip",
        title="Chinese-CLIP",
        model_type="chinese_clip",
        exporter="clipblip.export.chinese_clip",
        engine="clipblip.engine.clip:ChineseClipEngine",
        tasks=_dual_encoder_tasks("ChineseCLIPModel", "OFA-Sys/chinese-clip-vit-base-patch16"),
        openvino_graphs=_DUAL_GRAPHS,
        openvino_copies=_DUAL_ENCODER_COPIES,
        scoring="softmax",
        prompt_template="一张{}的照片。",  # Chinese-CLIP's zero-shot prompt: "a photo of {}."
        presets=(
            Preset("chinese-clip-base", "OFA-Sys/chinese-clip-vit-base-patch16's architecture: ViT-B/16 at 224, "
                                        "12-layer BERT-Chinese (RoBERTa-wwm-base) text tower, 52 tokens", {
                "vision_config": {"patch_size": 16},
                "text_config": {"vocab_size": 21128},
                "projection_dim": 512,
            }),
            Preset("chinese-clip-tiny", "2-layer, 32-wide towers on 32x32 images: for tests",
                   _tiny_towers({"vocab_size": 21128}, projection_dim=16)),
        ),
    ),
    Family(
        name="siglip",
        title="SigLIP",
        model_type="siglip",
        exporter="clipblip.export.siglip",
        engine="clipblip.engine.clip:SiglipEngine",
        tasks=_dual_encoder_tasks("SiglipModel", "google/siglip-base-patch16-224"),
        openvino_graphs=_DUAL_GRAPHS,
        openvino_copies=_DUAL_ENCODER_COPIES,
        scoring="sigmoid",
        prompt_template="This is a photo of {}.",  # the SigLIP model card's
        presets=(
            Preset("siglip-base", "google/siglip-base-patch16-224's architecture: ViT-B/16 at 224 with attention "
                                  "pooling, 12-layer 768-wide text tower over 64 tokens", {
                "text_config": _SIGLIP_TEXT_IDS,
                "vision_config": {"patch_size": 16},
            }),
            Preset("siglip-tiny", "2-layer, 32-wide towers on 32x32 images, 16 tokens: for tests",
                   _tiny_towers({**_SIGLIP_TEXT_IDS, "vocab_size": 4000, "max_position_embeddings": 16})),
        ),
    ),
    Family(
        name="open_clip",
        title="OpenCLIP",
        model_type="open_clip",
        exporter="clipblip.export.openclip",
        engine="clipblip.engine.clip:OpenClipEngine",
        tasks=_dual_encoder_tasks("open_clip.CLIP", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
        openvino_graphs=_DUAL_GRAPHS,
        openvino_copies=_DUAL_ENCODER_COPIES,
        # the manifest says which: sigmoid with the logit bias where the checkpoint has one (SigLIP), else softmax
        scoring="softmax",
        prompt_template="a photo of a {}.",  # open_clip's zero-shot templates begin with it
        checkpoint_file="open_clip_config.json",
        ref_prefixes=("hf-hub:", "open_clip:"),
        export_needs=("open_clip", "timm"),
        # full size, random weights: open_clip builds each from its own config (docs/openclip.md)
        presets=tuple(Preset("openclip-" + arch.lower(), f"open_clip's {arch}: {what}", {"architecture": arch})
                      for arch, what in (
            ("ViT-B-32", "OpenCLIP ViT-B/32 at 224 with the 12-layer text transformer (LAION, DataComp)"),
            ("ViT-B-32-quickgelu", "ViT-B/32 with QuickGELU, as OpenAI, MetaCLIP and DFN trained it"),
            ("ViT-H-14", "ViT-H/14 at 224, 24-layer 1024-wide text tower (LAION-2B, DFN5B)"),
            ("ViT-B-16-SigLIP", "timm ViT-B/16 with MAP pooling, text pooled at the last token, no causal mask, "
                                "logit bias; a stand-in SentencePiece tokenizer"),
            ("ViT-B-16-SigLIP2", "SigLIP 2's ViT-B/16; a stand-in Gemma-style tokenizer"),
            ("MobileCLIP2-S0", "timm fastvit_mci0 conv tower at 256 (branches folded), 12-layer text tower"),
            ("MobileCLIP-S1", "timm fastvit_mci1 conv tower at 256 (branches folded), 12-layer text tower"),
            ("PE-Core-B-16", "Perception Encoder: timm ViT-B/16 with RoPE and attention pooling, 32 tokens"),
            ("xlm-roberta-base-ViT-B-32", "ViT-B/32 with an XLM-RoBERTa base text tower (mean pooled); a stand-in "
                                          "tokenizer"),
        )),
    ),
    Family(
        name="blip",
        title="BLIP",
        model_type="blip",
        exporter="clipblip.export.blip",
        engine="clipblip.engine.blip:BlipEngine",
        tasks=(
            Task("caption", "caption", "BlipForConditionalGeneration", ("image_tower", "cross_kv", "decoder_step"),
                 "Salesforce/blip-image-captioning-base", max_new_tokens=30),
            Task("vqa", "vqa", "BlipForQuestionAnswering",
                 ("image_tower", "question_encoder", "cross_kv", "decoder_step"), "Salesforce/blip-vqa-base",
                 max_new_tokens=10),
            Task("match", "itm", "BlipForImageTextRetrieval", ("image_tower", "itm_head", "itc_image", "itc_text"),
                 "Salesforce/blip-itm-base-coco"),
        ),
        # 577-token image tower, 2 threads (docs/same-answers.md, "Backends by CPU class"): on an Intel Xeon with
        # AMX, OpenVINO bf16 108 ms against ORT int8 161 ms; on an AMD EPYC with AVX-512 VNNI and BF16 but no AMX,
        # OpenVINO bf16 323 ms against ORT int8 (u8s7) 270 ms; without BF16 (AVX2) OpenVINO computes in f32, 2.2x
        # ORT int8's time on that EPYC: ORT.
        # The decoder step is as fast or faster on ORT everywhere measured. fp32: OpenVINO f32 581 ms against ORT's
        # 624 ms on the Zen 4 (issue 29's measurement); bf16 folders: OpenVINO wherever the CPU computes bf16.
        openvino_graphs=("image_tower",),
        openvino_copies={
            "int8": OpenVinoCopy("fp16", "native", ("amx",)),
            "int4": OpenVinoCopy("fp16", "native", ("amx",)),
            "fp32": OpenVinoCopy("fp32", "f32", ()),  # not by `auto`: see _DUAL_ENCODER_COPIES
            "bf16": OpenVinoCopy("fp32", "bf16", ("bf16",)),
        },
        presets=(
            Preset("blip-base", "Salesforce/blip-*-base: ViT-B/16 at 384 (577 image tokens), 12-layer BERT-base "
                                "text side", {"text_config": {"num_attention_heads": 12}}, "caption"),
            Preset("blip-tiny", "2-layer, 32-wide vision and text on 32x32 images: for tests", {
                "text_config": {"hidden_size": 32, "encoder_hidden_size": 32, "intermediate_size": 64,
                                "num_hidden_layers": 2, "num_attention_heads": 4},
                "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
                "image_text_hidden_size": 16,
            }, "caption"),
        ),
    ),
)}


# --- lookups (KeyError naming what the registry has) -------------------------------------------------

def family(name: str) -> Family:
    """The family called ``name`` (a manifest's ``family``)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r} (clipblip has: {', '.join(FAMILIES)})") from None


def model_types() -> list[str]:
    """The checkpoint ``model_type`` values clipblip exports."""
    return [f.model_type for f in FAMILIES.values()]


def by_model_type(model_type: str) -> Family:
    """The family of a checkpoint whose config.json says ``model_type``."""
    for f in FAMILIES.values():
        if f.model_type == model_type:
            return f
    raise KeyError(f"model type {model_type!r} is not supported (clipblip exports: {', '.join(model_types())})")


def by_reference(ref: str, is_folder: bool, has_file) -> Family | None:
    """The family that claims MODEL ``ref`` by prefix (``hf-hub:``), or a folder holding its ``checkpoint_file``
    and no config.json (``has_file(name)`` tells); None: read config.json's model_type."""
    for f in FAMILIES.values():
        if any(ref.startswith(prefix) for prefix in f.ref_prefixes):
            return f
    if is_folder and not has_file("config.json"):
        return next((f for f in FAMILIES.values() if f.checkpoint_file and has_file(f.checkpoint_file)), None)
    return None


def preset_names() -> list[str]:
    """Every preset as the MODEL argument spells it: ``random:clip-base``, ..."""
    return [RANDOM_PREFIX + p.name for f in FAMILIES.values() for p in f.presets]


def preset(name: str) -> tuple[Family, Preset]:
    """The family and preset of ``name`` (``blip-base`` or ``random:blip-base``)."""
    bare = name[len(RANDOM_PREFIX):] if name.startswith(RANDOM_PREFIX) else name
    for f in FAMILIES.values():
        for p in f.presets:
            if p.name == bare:
                return f, p
    raise KeyError(f"unknown random preset {name!r}; choose one of {', '.join(preset_names())}")


def title(name: str) -> str:
    """A family's name as people write it (CLIP, Chinese-CLIP, SigLIP, BLIP); an unknown one upper-cased."""
    return FAMILIES[name].title if name in FAMILIES else name.upper()


def family_of_task(name: str, prefer: str | None = None) -> str:
    """A family that does the engine task ``name``: ``prefer`` if it does, else the first in the registry."""
    doing = [f.name for f in FAMILIES.values() if any(t.name == name for t in f.tasks)]
    if not doing:
        raise KeyError(f"unknown task {name!r}")
    return prefer if prefer in doing else doing[0]


def export_tasks(family_name: str | None = None) -> list[str]:
    """The ``clipblip export --task`` values: of one family, or of all (the CLI's choices)."""
    chosen = [family(family_name)] if family_name else list(FAMILIES.values())
    return list(dict.fromkeys(name for f in chosen for name in f.export_tasks))


def export_task(name: str) -> tuple[Family, list[Task]]:
    """The family of an ``--task`` value and the tasks that export gives."""
    for f in FAMILIES.values():
        if name in f.export_tasks:
            return f, f.tasks_of(name)
    raise KeyError(f"unknown export task {name!r} (choose one of {', '.join(export_tasks())})")


def task_graphs(family_name: str, tasks: list[str] | tuple[str, ...],
                towers: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The graphs an engine opens for ``tasks`` of a family, each once, in task order; unknown tasks add none.
    ``towers`` (a manifest's ``model.towers``; None: every one) leaves out the graphs of the towers not held."""
    f = family(family_name)
    by_name = {t.name: t for t in f.tasks}
    left_out = {graph for tower, graph in f.towers.items() if towers is not None and tower not in towers}
    return list(dict.fromkeys(g for name in tasks if name in by_name for g in by_name[name].graphs
                              if g not in left_out))


def tower_tasks(family_name: str, tasks: list[str] | tuple[str, ...],
                towers: list[str] | tuple[str, ...]) -> list[str]:
    """Which of an export's ``tasks`` a folder holding ``towers`` does: all of them with every tower, else those a
    single tower does (``Task.one_tower``)."""
    f = family(family_name)
    if set(f.towers) <= set(towers):
        return list(tasks)
    one_tower = {t.name for t in f.tasks if t.one_tower}
    return [name for name in tasks if name in one_tower]


def export_hint(family_name: str, task_name: str | None = None) -> str:
    """The command that exports a folder for ``task_name`` (an engine or --task name; None: the family's first).

    e.g. ``clipblip export Salesforce/blip-image-captioning-base --out DIR (or random:blip-base --task caption)``
    """
    f = family(family_name)
    chosen = next((t for t in f.tasks if task_name in (t.name, t.export_task)), None) if task_name else f.tasks[0]
    if chosen is None:
        raise KeyError(f"{f.name} has no task {task_name!r} (has: {', '.join(t.name for t in f.tasks)})")
    flag = f" --task {chosen.export_task}" if chosen.export_task else ""
    return f"clipblip export {chosen.example} --out DIR (or {RANDOM_PREFIX}{f.presets[0].name}{flag})"


# --- the code behind a family (imported on request) --------------------------------------------------

def load_exporter(family_name: str) -> ModuleType:
    """The family's exporter module (needs torch and transformers)."""
    return importlib.import_module(family(family_name).exporter)


def load_engine_class(family_name: str) -> type:
    """The family's engine class (ONNX Runtime, no torch)."""
    module, _, name = family(family_name).engine.partition(":")
    return getattr(importlib.import_module(module), name)
