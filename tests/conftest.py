"""Shared fixtures: tiny random CLIP and BLIP checkpoints saved with save_pretrained, their exports, photos.

Plain values and functions that test modules import live in tests/helpers.py, not here.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# clipblip's user cache (verified graph hashes, compiled OpenVINO graphs): the session's own, removed after
os.environ["CLIPBLIP_CACHE"] = tempfile.mkdtemp(prefix="clipblip-test-cache-")
atexit.register(shutil.rmtree, os.environ["CLIPBLIP_CACHE"], True)

from clipblip import torchvision_cpu  # noqa: E402

torchvision_cpu.install()  # before anything imports torchvision (transformers, open_clip, timm)

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import BLIP_QUESTIONS, GENERATION_CAP, end_lengths, varied_images


def pytest_configure(config):
    """PyTorch computes the references of tiny models on one thread: its pool costs more than it gives on them
    (a tiny BLIP fixture 8.7 → 1.6 s on 2 cores) and fights ONNX Runtime's for the cores."""
    import torch

    torch.set_num_threads(1)


# Two deliberately different shapes: exports must not assume ViT-B/32 sizes.
CLIP_VARIANTS = {
    "square30": dict(
        text=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
        vision=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                    image_size=30, patch_size=6),
        projection_dim=24, resize=30, crop=30,
    ),
    "crop48": dict(
        text=dict(hidden_size=40, intermediate_size=64, num_hidden_layers=3, num_attention_heads=5),
        vision=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                    image_size=48, patch_size=16),
        projection_dim=12, resize=56, crop=48,
    ),
}


@dataclass
class TinyClip:
    name: str
    checkpoint: Path  # save_pretrained directory
    exported: Path  # clipblip export of it
    model: object  # the transformers CLIPModel, reloaded from the checkpoint
    processor: object  # CLIPProcessor reloaded from the checkpoint


@pytest.fixture(scope="session")
def clip_tokenizer():
    from clipblip.export.vocab import clip_tokenizer

    return clip_tokenizer()


def save_tiny_clip(folder: Path, variant: dict, tokenizer) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    torch.manual_seed(1234)
    config = CLIPConfig(text_config=variant["text"], vision_config=variant["vision"],
                        projection_dim=variant["projection_dim"])
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": variant["resize"]},
                                              crop_size={"height": variant["crop"], "width": variant["crop"]}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@pytest.fixture(scope="session", params=sorted(CLIP_VARIANTS))
def tiny_clip(request, tmp_path_factory, clip_tokenizer) -> TinyClip:
    from transformers import CLIPModel, CLIPProcessor

    from clipblip.export import export_model

    root = tmp_path_factory.mktemp(f"clip-{request.param}")
    checkpoint = root / "checkpoint"
    save_tiny_clip(checkpoint, CLIP_VARIANTS[request.param], clip_tokenizer)
    exported = root / "exported"
    export_model(str(checkpoint), exported)
    model = CLIPModel.from_pretrained(checkpoint).eval()
    processor = CLIPProcessor.from_pretrained(checkpoint, backend="pil")
    return TinyClip(request.param, checkpoint, exported, model, processor)


def sample_photo(name: str) -> Path:
    from matplotlib import cbook

    return Path(cbook.get_sample_data(name, asfileobj=False))


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    """Real photos shipped by matplotlib."""
    return [sample_photo("grace_hopper.jpg"), sample_photo("Minduka_Present_Blue_Pack.png")]


@pytest.fixture(scope="session")
def odd_images(tmp_path_factory) -> dict[str, Path]:
    """Greyscale, RGBA, CMYK, palette, tiny and very elongated images, saved as files."""
    root = tmp_path_factory.mktemp("odd-images")
    base = Image.open(sample_photo("grace_hopper.jpg")).convert("RGB")
    rng = np.random.default_rng(0)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, base.size[::-1], dtype=np.uint8)))
    images = {
        "grey.png": base.convert("L"),
        "rgba.png": rgba,
        "cmyk.jpg": base.convert("CMYK"),
        "palette.png": base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64),
        "tiny_1x1.png": Image.new("RGB", (1, 1), (200, 30, 90)),
        "small_5x7.png": Image.fromarray(rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)),
        "wide_600x8.png": Image.fromarray(rng.integers(0, 256, (8, 600, 3), dtype=np.uint8)),
        "tall_9x400.png": Image.fromarray(rng.integers(0, 256, (400, 9, 3), dtype=np.uint8)),
    }
    paths = {}
    for name, image in images.items():
        image.save(root / name)
        paths[name] = root / name
    return paths


# --- BLIP --------------------------------------------------------------------------------------------

BLIP_TASK_CLASSES = {"caption": "BlipForConditionalGeneration", "vqa": "BlipForQuestionAnswering",
                     "itm": "BlipForImageTextRetrieval"}
# Caption: vision wider than text (cross-attention from 48-wide patches into a 32-wide decoder).
# VQA needs equal widths (its decoder cross-attends to the question encoding with the image's width).
BLIP_SIZES = {
    "caption": dict(text=dict(hidden_size=32, encoder_hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4),
                    vision=dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=48, patch_size=12), image_text_hidden_size=16),
    "vqa": dict(text=dict(hidden_size=32, encoder_hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                          num_attention_heads=2),
                vision=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                            image_size=32, patch_size=8), image_text_hidden_size=16),
    "itm": dict(text=dict(hidden_size=32, encoder_hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                          num_attention_heads=4),
                vision=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3,
                            image_size=40, patch_size=10), image_text_hidden_size=12),
}


@dataclass
class TinyBlip:
    task: str
    checkpoint: Path
    exported: Path
    model: object
    processor: object


@pytest.fixture(scope="session")
def blip_tokenizer():
    from clipblip.export.vocab import blip_tokenizer

    return blip_tokenizer()


def bias_end_token(model, task, pixel_values, questions, tokenizer) -> float:
    """Raise the [SEP] logit bias until, in one batch, some rows end early and others reach the cap."""
    import torch

    eos = model.config.text_config.sep_token_id
    bias = model.text_decoder.cls.predictions.bias
    kwargs = {}
    if task == "vqa":
        enc = tokenizer(questions, padding=True, return_tensors="pt")
        kwargs = dict(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    for shift in np.arange(0.0, 12.0, 0.1):
        with torch.no_grad():
            bias[eos] += 0.1 if shift else 0.0
            out = model.generate(pixel_values=pixel_values, max_new_tokens=GENERATION_CAP, num_beams=1,
                                 do_sample=False, **kwargs)
        lengths = end_lengths(out, eos)
        ended = [n for n in lengths if n is not None]
        if None in lengths and ended and len(set(lengths)) >= 3:
            return float(shift)
    raise AssertionError("no [SEP] bias makes rows end at different steps; the test model is unusable")


def make_tiny_blip(task: str, tmp_path_factory, blip_tokenizer, photos) -> TinyBlip:
    """A random BLIP of ``task`` saved with save_pretrained, exported, and reloaded for reference."""
    import torch
    import transformers
    from transformers import BlipConfig, BlipImageProcessorPil, BlipProcessor

    from clipblip.export import export_model

    sizes = BLIP_SIZES[task]
    torch.manual_seed(7)
    config = BlipConfig(text_config={**sizes["text"], "initializer_range": 0.1},
                        vision_config={**sizes["vision"], "initializer_range": 0.1},
                        image_text_hidden_size=sizes["image_text_hidden_size"])
    cls = getattr(transformers, BLIP_TASK_CLASSES[task])
    model = cls(config).eval()
    size = sizes["vision"]["image_size"]
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": size, "width": size}),
                              tokenizer=blip_tokenizer)
    if task in ("caption", "vqa"):
        pixel_values = processor.image_processor(images=varied_images(photos), return_tensors="pt")["pixel_values"]
        bias_end_token(model, task, pixel_values, BLIP_QUESTIONS, blip_tokenizer)
    root = tmp_path_factory.mktemp(f"blip-{task}")
    checkpoint = root / "checkpoint"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    exported = root / "exported"
    export_model(str(checkpoint), exported)  # the task comes from the checkpoint's architecture
    reloaded = cls.from_pretrained(checkpoint).eval()
    return TinyBlip(task, checkpoint, exported, reloaded, BlipProcessor.from_pretrained(checkpoint, backend="pil"))


@pytest.fixture(scope="session")
def blip_caption(tmp_path_factory, blip_tokenizer, photos) -> TinyBlip:
    return make_tiny_blip("caption", tmp_path_factory, blip_tokenizer, photos)


@pytest.fixture(scope="session")
def blip_vqa(tmp_path_factory, blip_tokenizer, photos) -> TinyBlip:
    return make_tiny_blip("vqa", tmp_path_factory, blip_tokenizer, photos)


@pytest.fixture(scope="session")
def blip_itm(tmp_path_factory, blip_tokenizer, photos) -> TinyBlip:
    return make_tiny_blip("itm", tmp_path_factory, blip_tokenizer, photos)


@pytest.fixture(scope="session", params=["caption", "vqa", "itm"])
def tiny_blip(request) -> TinyBlip:
    """Each BLIP task's tiny export in turn, for checks that hold for all three."""
    return request.getfixturevalue(f"blip_{request.param}")


@pytest.fixture(scope="session")
def clip_with_attentions(tmp_path_factory, clip_tokenizer):
    """The square30 tiny CLIP exported with --attentions, and its reference model."""
    from transformers import CLIPModel, CLIPProcessor

    from clipblip.export import export_model

    root = tmp_path_factory.mktemp("clip-attn")
    save_tiny_clip(root / "checkpoint", CLIP_VARIANTS["square30"], clip_tokenizer)
    export_model(str(root / "checkpoint"), root / "exported", attentions=True)
    model = CLIPModel.from_pretrained(root / "checkpoint", attn_implementation="eager").eval()
    return TinyClip("square30", root / "checkpoint", root / "exported", model,
                    CLIPProcessor.from_pretrained(root / "checkpoint", backend="pil"))


@pytest.fixture(scope="session")
def blip_caption_with_attentions(blip_caption, tmp_path_factory):
    """The tiny BLIP caption checkpoint exported again with --attentions."""
    from clipblip.export import export_model

    out = tmp_path_factory.mktemp("blip-attn") / "exported"
    export_model(str(blip_caption.checkpoint), out, attentions=True)
    return TinyBlip("caption", blip_caption.checkpoint, out, blip_caption.model, blip_caption.processor)


# --- lower precisions --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def blip_tiny_fp32(tmp_path_factory) -> Path:
    """random:blip-tiny's caption model exported in fp32: the reference of its lower-precision exports."""
    from clipblip.export import export_model

    out = tmp_path_factory.mktemp("blip-tiny-fp32") / "m"
    export_model("random:blip-tiny", out, task="caption")
    return out


@pytest.fixture(scope="session")
def int8_folders(tmp_path_factory) -> dict[str, Path]:
    """random:clip-tiny and random:blip-tiny (caption) exported in int8 on this machine: every graph int8, each
    with its stored check. Tests that change files work on copies."""
    from clipblip.export import export_model

    root = tmp_path_factory.mktemp("int8")
    export_model("random:clip-tiny", root / "clip", precision="int8")
    export_model("random:blip-tiny", root / "blip", task="caption", precision="int8")
    return {"clip": root / "clip", "blip": root / "blip"}


# --- one tower alone (export --towers) ----------------------------------------------------------------

@dataclass
class Towers:
    preset: str
    both: Path  # exported whole
    image: Path  # --towers image
    text: Path  # --towers text


@pytest.fixture(scope="session")
def tower_folders(tmp_path_factory):
    """``random:<preset>`` exported whole and with each tower alone, once per session for each preset asked for
    (a tiny one-tower export takes half a second)."""
    from clipblip.export import export_model

    made: dict[str, Towers] = {}

    def folders(preset: str) -> Towers:
        if preset not in made:
            root = tmp_path_factory.mktemp(f"towers-{preset}")
            for towers in ("both", "image", "text"):
                export_model(f"random:{preset}", root / towers, towers=towers)
            made[preset] = Towers(preset, root / "both", root / "image", root / "text")
        return made[preset]

    return folders


@pytest.fixture(scope="session")
def clip_towers(tower_folders) -> Towers:
    return tower_folders("clip-tiny")


@dataclass
class TinyDemo:
    out: Path  # the demo's folder (report.html, results.json, README.md...)
    messages: list  # what it said


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> TinyDemo:
    """One `clipblip demo` run on the tiny presets (the real demo falls back to the *-base presets)."""
    from clipblip import demo
    from tests.helpers import TINY_SOURCES

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(demo, "SOURCES", TINY_SOURCES)
    out, messages = tmp_path_factory.mktemp("demo"), []
    try:
        demo.run_demo(out, progress=messages.append)
    finally:
        monkeypatch.undo()
    return TinyDemo(out, messages)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless Chromium (the report and the page are checked in it)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("headless Chromium is not installed and `make test` could not install it "
                    "(Debian package 'chromium'; needs root and the Debian mirror)")
    return path


@dataclass
class TinyOpenClip:
    arch: str
    checkpoint: Path  # open_clip's local-dir layout
    exported: Path  # `clipblip export CHECKPOINT`, fp32


@pytest.fixture(scope="session")
def openclip(tmp_path_factory):
    """arch → its TinyOpenClip (tests/openclip_helpers.py), saved and exported through the CLI once per session."""
    pytest.importorskip("open_clip", reason="open_clip and timm (the `open_clip` extra) are not installed")
    from clipblip.cli import main
    from tests.openclip_helpers import save_checkpoint

    made: dict[str, TinyOpenClip] = {}

    def get(arch: str) -> TinyOpenClip:
        if arch not in made:
            root = tmp_path_factory.mktemp("openclip-" + arch.lower())
            checkpoint = save_checkpoint(arch, root / "checkpoint")
            assert main(["export", str(checkpoint), "--out", str(root / "exported")]) == 0
            made[arch] = TinyOpenClip(arch, checkpoint, root / "exported")
        return made[arch]

    return get
