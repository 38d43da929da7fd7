"""OpenCLIP checkpoints: open_clip's CLIP and CustomTextCLIP, with its own ViT, timm image towers (SigLIP, MobileCLIP's
FastViT, PE) or a Hugging Face text tower (XLM-RoBERTa).

MODEL is a folder in the layout of open_clip's hub repositories (``open_clip_config.json`` with ``model_cfg`` and
``preprocess_cfg``, ``open_clip_model.safetensors``, and a Hugging Face text tower's tokenizer files), a hub repository
(``hf-hub:ORG/NAME``), a pretrained tag (``open_clip:ARCH/TAG``) or a random preset. Each tower is traced from
``encode_image`` / ``encode_text``; what differs between architectures becomes manifest data: the preprocessing
(``image.style`` "open_clip"), the text cleaning, tokenizer and fixed text length, and the scoring (a per-label
sigmoid with the logit bias where the model has one, else a softmax). Training-time branches (MobileOne and RepMixer
blocks in FastViT) are folded before tracing. A tokenizer the engine cannot reproduce id for id is refused here,
before any graph is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import families
from ..errors import ModelSourceError, UsageError
from .. import torchvision_cpu
from . import checkpoint
from .checkpoint import SourceModel
from .clip import token_batch
from .specs import GraphSpec, TensorSpec

__all__ = ["OpenClipTower", "import_open_clip", "load_pretrained", "build_random",
           "graph_specs", "manifest_sections", "tokenizer_parts", "image_facts", "CHECK_TEXTS"]

FAMILY = "open_clip"
LOCAL = "local-dir:"
WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

# texts each exported tokenizer must encode exactly as open_clip does; stored in the manifest and checked again where
# the folder is opened (a different ftfy or tokenizers could change them)
CHECK_TEXTS = (
    "a photo of a cat",
    "A Photo Of  A\tDOG\n",
    "北京的一张照片，東京の写真",
    "🐱 a cat 🐈‍⬛ and a flag 🇯🇵",
    "Tom &amp; Jerry &lt;3 &#8211; &quot;cartoon&quot;",
    "cafÃ© and naÃ¯ve mojibake",
    "ＦＵＬＬ－ＷＩＤＴＨ ｔｅｘｔ １２３",
    "it's they're we'll I'd ‘curly’ “quotes” — ﬁne",
    "under_score, punct!uation? (and) [brackets] {braces}",
    " ".join(f"word{i}" for i in range(120)),
)


def import_open_clip():
    """The open_clip module, importable beside the CPU build of torch (:mod:`clipblip.torchvision_cpu`); without the
    ``open_clip`` extra, ModuleNotFoundError (the CLI names the extra to install)."""
    torchvision_cpu.install()
    import open_clip

    return open_clip


@contextlib.contextmanager
def traceable_attention():
    """nn.MultiheadAttention without its fused inference kernel (``_native_multi_head_attention``, which no-grad
    runs pick and the ONNX exporter cannot trace): its plain operations, the same maths."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


class OpenClipTower(nn.Module):
    """One tower of an open_clip model as a graph: ``encode_image`` (pixel_values) or ``encode_text`` (input_ids, every
    row at the context length; open_clip's text towers take no mask), giving the projected embedding (batch,
    embed_dim), not normalised."""

    def __init__(self, model: nn.Module, encode: str):
        super().__init__()
        self.model = model
        self.encode = encode  # "encode_image" or "encode_text"

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with traceable_attention():
            return getattr(self.model, self.encode)(inputs)


# --- loading -------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet(random: bool = False):
    """open_clip logs at INFO, and warns that a random preset's folder has no weights (clipblip says so itself)."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR if random else logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_pretrained(ref: str, task: str | None, architectures: list[str] | None, local_only: bool,
                    allow_pickle: bool = False) -> SourceModel:
    """A folder in open_clip's layout, ``hf-hub:ORG/NAME`` or ``open_clip:ARCH/TAG`` (the hub must be reachable)."""
    checkpoint.resolve_task(FAMILY, None, task, ref)  # refuses a --task
    open_clip = import_open_clip()
    folder = Path(ref)
    if folder.is_dir():
        weights = [folder / name for name in WEIGHTS if (folder / name).is_file()]
        if not weights:
            raise ModelSourceError(f"{ref}: no {' or '.join(WEIGHTS)}; open_clip would build random weights")
        if weights[0].suffix == ".bin" and not allow_pickle:
            raise ModelSourceError(f"{weights[0]}: a pickle (it can run code); clipblip loads safetensors unless "
                                   f"--allow-pickle")
        return _load(open_clip, LOCAL + str(folder), None, ref, random=False)
    if local_only:
        raise ModelSourceError(f"{ref}: the Hugging Face hub is unreachable; pass a folder in open_clip's layout "
                               f"(open_clip_config.json and open_clip_model.safetensors)")
    if ref.startswith("open_clip:"):
        arch, _, tag = ref[len("open_clip:"):].partition("/")
        if tag not in open_clip.list_pretrained_tags_by_model(arch):
            raise ModelSourceError(f"{ref}: open_clip has no pretrained tag {tag!r} for {arch!r} "
                                   f"(see open_clip.list_pretrained())")
        return _load(open_clip, arch, tag, ref, random=False)
    return _load(open_clip, ref, None, ref, random=False)


def build_random(preset: families.Preset, task: str | None = None) -> SourceModel:
    """A seeded random model of the preset's open_clip architecture at full size. The folder open_clip loads it from
    holds its config and, for a Hugging Face text tower, a stand-in tokenizer (its pieces are not the real one's)."""
    checkpoint.resolve_task(FAMILY, None, task, families.RANDOM_PREFIX + preset.name)
    open_clip = import_open_clip()
    arch = preset.config["architecture"]
    with tempfile.TemporaryDirectory() as folder:
        write_config(open_clip, arch, Path(folder))
        torch.manual_seed(0)
        source = _load(open_clip, LOCAL + folder, None, families.RANDOM_PREFIX + preset.name, random=True)
    source.source.update(seed=0, architecture=arch)
    return source


def write_config(open_clip, arch: str, folder: Path) -> None:
    """``folder`` as open_clip's local-dir loader reads it, without weights: ``arch``'s config, the preprocessing of
    its first pretrained tag, and stand-ins for what a Hugging Face text tower fetches from the hub."""
    from . import vocab

    model_cfg = open_clip.get_model_config(arch)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    preprocess = {key: value for key, value in (open_clip.get_pretrained_cfg(arch, tags[0]) if tags else {}).items()
                  if key in ("mean", "std", "interpolation", "resize_mode", "fill_color")}
    preprocess["size"] = model_cfg["vision_cfg"].get("image_size", 224)
    text = model_cfg["text_cfg"]
    if text.get("hf_model_name"):  # the text tower's config, which HFTextEncoder reads from where the name points
        from transformers import AutoConfig, XLMRobertaConfig

        if "xlm-roberta" not in text["hf_model_name"]:
            raise ModelSourceError(f"random:{arch}: no offline config for its text tower {text['hf_model_name']!r}")
        tower = folder / "text_tower"
        XLMRobertaConfig(vocab_size=250002, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                         pad_token_id=1, bos_token_id=0, eos_token_id=2).save_pretrained(tower)
        AutoConfig.from_pretrained(tower)  # loads
        text["hf_model_name"] = str(tower)
    if text.get("hf_tokenizer_name"):
        length = text.get("context_length", 77)
        if "xlm-roberta" in text["hf_tokenizer_name"]:
            vocab.xlm_roberta_tokenizer(8000, length, str(folder))
        elif "SigLIP2" in text["hf_tokenizer_name"]:
            vocab.gemma_tokenizer(8000, length, str(folder), siglip2=True)
        elif "SigLIP" in text["hf_tokenizer_name"]:
            vocab.siglip_tokenizer(min(text["vocab_size"], 8000), length, str(folder)).save_pretrained(folder)
        else:
            raise ModelSourceError(f"random:{arch}: no stand-in for its tokenizer {text['hf_tokenizer_name']!r}")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))


def _load(open_clip, name: str, tag: str | None, ref: str, random: bool) -> SourceModel:
    """open_clip's model (folded, eval mode), preprocessing and tokenizer for ``name``, as a SourceModel; the
    tokenizer's reproduction checked before anything else happens."""
    try:
        with _quiet(random):
            # pretrained_text False: no base text weights fetched for a Hugging Face tower; the checkpoint's load after
            model, _, _ = open_clip.create_model_and_transforms(name, pretrained=tag, pretrained_text=False)
            tokenizer = open_clip.get_tokenizer(name)
    except (OSError, ValueError, RuntimeError, KeyError, AssertionError) as e:
        raise ModelSourceError(f"{ref}: open_clip cannot load it ({str(e).splitlines()[0] if str(e) else e!r})") \
            from None
    model_cfg, preprocess_cfg = _configs(open_clip, name, tag, model)
    model.eval()
    folded = fold_branches(model)
    fast, tokenizer_facts = tokenizer_parts(tokenizer, ref)
    source = {"model": ref, "kind": "random" if random else "pretrained", "random_weights": random,
              "architecture": model_cfg.get("name") or (name if not name.startswith(LOCAL) else None)}
    return SourceModel(FAMILY, None, model, preprocess_cfg, tokenizer, source, fast, facts={
        "model_cfg": model_cfg, "tokenizer": tokenizer_facts, "folded": folded})


def _configs(open_clip, name: str, tag: str | None, model: nn.Module) -> tuple[dict, dict]:
    """(model_cfg, preprocess_cfg) as open_clip used them for ``name``."""
    if name.startswith(LOCAL):
        config = json.loads((Path(name[len(LOCAL):]) / "open_clip_config.json").read_text(encoding="utf-8"))
        model_cfg, preprocess = config["model_cfg"], config.get("preprocess_cfg", {})
    elif name.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download

        config = json.loads(Path(hf_hub_download(name[len("hf-hub:"):], "open_clip_config.json")).read_text())
        model_cfg, preprocess = config["model_cfg"], config.get("preprocess_cfg", {})
    else:
        model_cfg, preprocess = open_clip.get_model_config(name), open_clip.get_pretrained_cfg(name, tag)
    from open_clip.transform import PreprocessCfg

    cfg = dict(vars(PreprocessCfg()))  # open_clip's defaults, then what the checkpoint says
    cfg.update({key: value for key, value in preprocess.items() if key in cfg})
    return model_cfg, cfg


def fold_branches(model: nn.Module) -> int:
    """Fold training-time branches into single convolutions, in place (timm's ``reparameterize``: MobileOne and
    RepMixer blocks of FastViT); the number of modules folded."""
    folded = 0
    for module in list(model.modules()):
        for method in ("reparameterize", "fuse"):
            if callable(getattr(module, method, None)):
                getattr(module, method)()
                folded += 1
                break
    return folded


# --- tokenizers ----------------------------------------------------------------------------------------------------

def tokenizer_parts(tokenizer: Any, ref: str) -> tuple[Any, dict[str, Any]]:
    """(``tokenizers`` Tokenizer, the manifest's tokenizer section) reproducing open_clip's ``tokenizer``: its cleaning
    as a named step, then the tokenizer, every row padded to the context length. ModelSourceError, naming the
    tokenizer, for one that cannot be reproduced id for id on :data:`CHECK_TEXTS`."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    kind = type(tokenizer).__name__
    length = int(tokenizer.context_length)
    if isinstance(tokenizer, SimpleTokenizer):
        if tokenizer.reduction_fn is not None:
            raise ModelSourceError(f"{ref}: its {kind} reduces texts ({tokenizer.reduction_fn}), which clipblip does "
                                   f"not reproduce; not exported")
        fast = simple_tokenizer_json(tokenizer)
        bos, eos, pad, side = tokenizer.sot_token_id, tokenizer.eot_token_id, 0, "right"
    elif isinstance(tokenizer, HFTokenizer):
        unsupported = [what for what, used in (("strip_sep_token", tokenizer.strip_sep_token),
                                               (f"tokenizer_mode {tokenizer.tokenizer_mode!r}", tokenizer.tokenizer_mode),
                                               ("a language setting", hasattr(tokenizer, "set_lang_fn"))) if used]
        if unsupported:
            raise ModelSourceError(f"{ref}: its {kind} uses {', '.join(unsupported)}, which clipblip does not "
                                   f"reproduce; not exported")
        hf = tokenizer.tokenizer
        if hasattr(hf, "backend_tokenizer"):
            from tokenizers import Tokenizer

            fast = Tokenizer.from_str(hf.backend_tokenizer.to_str())
        elif type(hf).__name__ == "SiglipTokenizer":
            from .siglip import fast_tokenizer

            fast = fast_tokenizer(hf)
        else:
            raise ModelSourceError(f"{ref}: its tokenizer {type(hf).__name__} has no tokenizer.json form; not exported")
        eos = hf.eos_token_id if hf.eos_token_id is not None else hf.sep_token_id
        bos = hf.bos_token_id if hf.bos_token_id is not None else (hf.cls_token_id if hf.cls_token_id is not None
                                                                   else eos)
        pad = hf.pad_token_id if hf.pad_token_id is not None else 0
        side = getattr(hf, "padding_side", "right")  # Gemma's pads on the left
        if getattr(hf, "truncation_side", "right") != "right":
            raise ModelSourceError(f"{ref}: its tokenizer truncates on the {hf.truncation_side}; not exported")
    else:
        raise ModelSourceError(f"{ref}: its tokenizer {kind} is not one clipblip reproduces (SimpleTokenizer, "
                               f"HFTokenizer); not exported")
    facts = {"file": "tokenizer.json", "max_length": length, "bos_id": int(bos), "eos_id": int(eos),
             "pad_id": int(pad), "padding": "max_length", "padding_side": side, "attention_mask": False,
             "clean": "open_clip:" + _clean_name(tokenizer, ref), "kind": kind}
    facts["checks"] = _checked(tokenizer, fast, facts, ref)
    return fast, facts


def _clean_name(tokenizer: Any, ref: str) -> str:
    from open_clip import tokenizer as module

    names = {module._clean_lower: "lower", module._clean_whitespace: "whitespace",
             module._clean_canonicalize: "canonicalize"}
    if tokenizer.clean_fn not in names:
        raise ModelSourceError(f"{ref}: its tokenizer cleans texts with {tokenizer.clean_fn!r}, which clipblip does "
                               f"not reproduce; not exported")
    return names[tokenizer.clean_fn]


def simple_tokenizer_json(tokenizer: Any) -> Any:
    """open_clip's SimpleTokenizer (byte-level BPE with "</w>" word ends, its regex, case-insensitive, and its
    special tokens) as a ``tokenizers`` Tokenizer; rows are ``<start_of_text> … <end_of_text>``. Cleaning is not in
    it: the engine cleans first, as the manifest says."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    merges = [pair for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda item: item[1])]
    fast = Tokenizer(models.BPE(vocab=dict(tokenizer.encoder), merges=merges, end_of_word_suffix="</w>",
                                continuing_subword_prefix=""))
    fast.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("(?i)" + tokenizer.pat.pattern), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    fast.decoder = decoders.ByteLevel()
    specials = [tokenizer.decoder[i] for i in tokenizer.all_special_ids]
    fast.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    sot, eot = tokenizer.decoder[tokenizer.sot_token_id], tokenizer.decoder[tokenizer.eot_token_id]
    fast.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}", special_tokens=[(sot, tokenizer.sot_token_id), (eot, tokenizer.eot_token_id)])
    return fast


def _checked(tokenizer: Any, fast: Any, facts: dict[str, Any], ref: str) -> list[dict[str, Any]]:
    """The check cases (text, ids without padding): open_clip's ids, which the engine's tokenisation must give."""
    from ..engine.text import TextTokenizer

    ours = TextTokenizer(fast, facts["max_length"], facts["pad_id"], "max_length", facts["padding_side"], False,
                         facts["clean"])
    expected = tokenizer(list(CHECK_TEXTS)).tolist()  # (texts, context length), padded
    got = ours.pad(ours.ids(list(CHECK_TEXTS)))[0].tolist()
    for i, (text, want, have) in enumerate(zip(CHECK_TEXTS, expected, got)):
        if want != have:
            at = next(j for j, (a, b) in enumerate(zip(want, have)) if a != b)
            raise ModelSourceError(f"{ref}: clipblip cannot reproduce its {facts['kind']} exactly: text {i} "
                                   f"({text[:30]!r}) gives id {have[at]} at position {at}, open_clip {want[at]}; "
                                   f"not exported")
    return [{"text": text, "ids": row} for text, row in zip(CHECK_TEXTS, ours.ids(list(CHECK_TEXTS)))]


# --- graphs and manifest -------------------------------------------------------------------------------------------

def graph_specs(source: SourceModel, attentions: bool = False) -> list[GraphSpec]:
    if attentions:
        raise UsageError("--attentions: OpenCLIP exports carry no attention weights (their towers come from "
                         "open_clip, timm or transformers, each its own way); export without it")
    sections = manifest_sections(source)
    facts, tok = sections["model"], sections["tokenizer"]
    height, width = sections["image"]["size"]
    length = tok["max_length"]
    embed_axes = ("batch", facts["embed_dim"])
    vocab = int(source.model.token_embedding.num_embeddings) if hasattr(source.model, "token_embedding") else None
    high = min(tok["bos_id"], tok["eos_id"]) if tok["kind"] == "SimpleTokenizer" else \
        min(x for x in (source.fast_tokenizer.get_vocab_size(), vocab) if x)

    def image_sample(sizes, generator):
        return {"pixel_values": torch.randn(sizes["batch"], 3, height, width, generator=generator)}

    def text_sample(sizes, generator):
        rows = token_batch({"batch": sizes["batch"], "sequence": length}, generator, high=high, bos_id=tok["bos_id"],
                           eos_id=tok["eos_id"], pad_id=tok["pad_id"], padding_side=tok["padding_side"])
        return {"input_ids": rows["input_ids"]}

    image_fusion, text_fusion = fusions(source.model)
    return [
        GraphSpec(
            name="image_tower",
            module=OpenClipTower(source.model, "encode_image").eval(),
            inputs=(TensorSpec("pixel_values", "float32", ("batch", 3, height, width)),),
            outputs=(TensorSpec("image_embeds", "float32", embed_axes),),
            sample=image_sample,
            trace_sizes={"batch": 2},
            check_sizes=({"batch": 1}, {"batch": 3}),
            gate_sizes=({"batch": 2},),
            fusion=image_fusion,
            gate={"image_embeds": 0.999},
        ),
        GraphSpec(
            name="text_tower",
            module=OpenClipTower(source.model, "encode_text").eval(),
            inputs=(TensorSpec("input_ids", "int64", ("batch", length)),),  # every row padded to the context length
            outputs=(TensorSpec("text_embeds", "float32", embed_axes),),
            sample=text_sample,
            trace_sizes={"batch": 2},
            check_sizes=({"batch": 1}, {"batch": 3}),
            fusion=text_fusion,
            gate={"text_embeds": 0.999},
        ),
    ]


def fusions(model: nn.Module) -> tuple[dict | None, dict | None]:
    """ONNX Runtime's transformer optimizer settings for the (image, text) tower, or None where no pattern of its
    fits (FastViT's convolutions); a fusion is kept only if the fused graph passes parity (``fuse_graph``)."""

    def blocks(model_type: str, width: int, heads: int) -> dict:
        return {"model_type": model_type, "num_heads": int(heads), "hidden_size": int(width)}

    visual, text = model.visual, getattr(model, "text", model)
    if hasattr(visual, "transformer"):  # open_clip's ViT
        image = blocks("clip", visual.transformer.width, visual.transformer.resblocks[0].attn.num_heads)
    elif hasattr(visual, "trunk") and hasattr(visual.trunk, "blocks") and hasattr(visual.trunk.blocks[0], "attn"):
        image = blocks("vit", visual.trunk.embed_dim, visual.trunk.blocks[0].attn.num_heads)  # timm ViTs
    else:
        image = None
    if hasattr(text, "transformer") and hasattr(text.transformer, "config"):  # a Hugging Face tower
        config = text.transformer.config
        words = blocks("bert", config.hidden_size, config.num_attention_heads)
    elif hasattr(text, "transformer") and hasattr(text.transformer, "resblocks"):
        words = blocks("clip", text.transformer.width, text.transformer.resblocks[0].attn.num_heads)
    else:
        words = None
    return image, words


INTERPOLATIONS = ("bicubic", "bilinear")


def image_facts(preprocess: dict[str, Any]) -> dict[str, Any]:
    """open_clip's evaluation transform from a ``preprocess_cfg``, as the manifest's image section."""
    size = preprocess["size"]
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if preprocess.get("mode", "RGB") != "RGB":
        raise ModelSourceError(f"preprocess_cfg mode {preprocess['mode']!r}: clipblip runs RGB models only")
    if preprocess["resize_mode"] not in ("shortest", "longest", "squash"):
        raise ModelSourceError(f"preprocess_cfg resize_mode {preprocess['resize_mode']!r} is not one open_clip has")
    fill = preprocess.get("fill_color", 0)
    return {
        "style": "open_clip",
        "size": [height, width],
        "resize_mode": preprocess["resize_mode"],
        # open_clip's transform takes "bilinear" as bilinear and anything else as bicubic
        "resample": "bilinear" if preprocess["interpolation"] == "bilinear" else "bicubic",
        "fill_color": list(fill) if isinstance(fill, (list, tuple)) else int(fill),
        "mean": [float(m) for m in preprocess["mean"]],
        "std": [float(s) for s in preprocess["std"]],
        "input_size": [height, width],
    }


def _architecture(model: nn.Module) -> dict[str, Any]:
    """What kind of towers the model has and how its text is pooled, for people reading the manifest."""
    visual = model.visual
    image = f"timm:{visual.trunk.default_cfg.get('architecture', type(visual.trunk).__name__)}" \
        if hasattr(visual, "trunk") else type(visual).__name__
    text = getattr(model, "text", model)
    if hasattr(text, "transformer") and hasattr(text.transformer, "config"):  # HFTextEncoder
        return {"image_tower": image, "text_tower": f"transformers:{type(text.transformer).__name__}",
                "text_pool": type(text.pooler).__name__}
    return {"image_tower": image, "text_tower": type(text).__name__ if text is not model else "TextTransformer",
            "text_pool": getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax")),
            "causal_text": getattr(text, "attn_mask", None) is not None}


def manifest_sections(source: SourceModel) -> dict[str, Any]:
    model, facts = source.model, source.facts
    family = families.family(FAMILY)
    bias = getattr(model, "logit_bias", None)
    image = image_facts(source.image_processor)
    return {
        "tasks": [t.name for t in family.tasks_of(None)],
        "image": image,
        "tokenizer": {key: value for key, value in facts["tokenizer"].items()},
        "model": {
            "logit_scale": float(model.logit_scale.detach().exp()),
            **({"logit_bias": float(bias.detach())} if bias is not None else {}),
            "embed_dim": int(facts["model_cfg"]["embed_dim"]),
            "image_size": image["size"][0],
            "scoring": "sigmoid" if bias is not None else "softmax",
            "prompt_template": family.prompt_template,
            "architecture": {**_architecture(model), "folded_modules": facts["folded"]},
            "attentions": False,
        },
    }
