"""OpenCLIP checkpoints in open_clip's local-dir layout, each architecture tiny: `clipblip export FOLDER`, then the CLI
gives open_clip's embeddings, preprocessing, tokens and zero-shot probabilities."""

import json

import numpy as np
import pytest
from PIL import Image

from clipblip.engine import OpenClipEngine
from clipblip.errors import ImageError, ModelSourceError
from clipblip.export.openclip import CHECK_TEXTS
from clipblip.manifest import Manifest
from tests.helpers import TEXTS, run_cli

pytest.importorskip("open_clip", reason="open_clip and timm (the `open_clip` extra) are not installed")

from tests.openclip_helpers import TRICKY_TEXTS, architectures, open_clip_reference  # noqa: E402

ARCHS = list(architectures())
# each architecture's whole CLI parity runs in `make test-all`; `make test` keeps one of each kind of tower (plain ViT,
# timm ViT with sigmoid scoring, FastViT folded, RoPE with attention pooling) within its 4 minutes
SLOW_ARCHS = ("ViT-B-32-quickgelu", "ViT-B-16-SigLIP2", "xlm-roberta-base-ViT-B-32")
ALL_TEXTS = list(dict.fromkeys(TEXTS + TRICKY_TEXTS + list(CHECK_TEXTS)))


def images(photos, odd_images, preprocess=None):
    """The photos and odd images; with ``preprocess``, only those open_clip's takes (in "longest" mode a 600x8 image
    resizes to 0 rows: open_clip raises, clipblip reports that image's error)."""
    paths = list(photos) + [path for name, path in sorted(odd_images.items()) if "huge" not in name]
    return [p for p in paths if preprocess is None or _takes(preprocess, p)]


def _takes(preprocess, path) -> bool:
    try:
        preprocess(Image.open(path))
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW_ARCHS else a for a in ARCHS])
def test_cli_embeddings_match_open_clip(arch, openclip, photos, odd_images, tmp_path, capsys):
    import torch

    tiny = openclip(arch)
    model, preprocess, tokenizer = open_clip_reference(tiny.checkpoint)
    paths = images(photos, odd_images, preprocess)
    code, _, err = run_cli(capsys, "embed", tiny.exported, "--images", *paths, "--out", tmp_path / "images.npz")
    assert code == 0, err
    got = np.load(tmp_path / "images.npz")
    assert list(got["items"]) == [str(p) for p in paths]
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.open(p)) for p in paths])
        want = model.encode_image(pixels, normalize=True).numpy()
    assert np.abs(got["embeddings"] - want).max() < 1e-4

    code, _, err = run_cli(capsys, "embed", tiny.exported, "--texts", *ALL_TEXTS, "--out", tmp_path / "texts.npy")
    assert code == 0, err
    with torch.no_grad():
        want = model.encode_text(tokenizer(ALL_TEXTS), normalize=True).numpy()
    assert np.abs(np.load(tmp_path / "texts.npy") - want).max() < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_pixels_and_token_ids_equal_open_clips(arch, openclip, photos, odd_images):
    tiny = openclip(arch)
    _, preprocess, tokenizer = open_clip_reference(tiny.checkpoint)
    engine = OpenClipEngine.from_dir(tiny.exported, provider="cpu")
    rng = np.random.default_rng(1)
    odd = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((31, 97), (97, 31), (5, 3))]
    odd += [odd[0].convert(mode) for mode in ("RGBA", "LA", "L", "P", "CMYK", "1", "I", "F")]
    for image in odd + [Image.open(p) for p in images(photos, odd_images)]:
        try:
            want = preprocess(image).numpy()
        except ValueError:  # open_clip cannot take it: clipblip says which image, and why
            with pytest.raises(ImageError, match="cannot preprocess"):
                engine.preprocess([image])
            continue
        assert np.array_equal(engine.preprocess([image])[0], want), (image.mode, image.size)
    want = tokenizer(ALL_TEXTS).numpy()
    assert np.array_equal(engine.tokenizer(ALL_TEXTS)[0], want)


@pytest.mark.parametrize("arch", ARCHS)
def test_classify_probabilities_are_open_clips(arch, openclip, photos, capsys):
    import torch

    tiny = openclip(arch)
    model, preprocess, tokenizer = open_clip_reference(tiny.checkpoint)
    labels = ["cat", "dog", "woman in uniform"]
    code, out, err = run_cli(capsys, "classify", tiny.exported, *photos, "--labels", *labels, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["random_weights"] is False  # a checkpoint folder: clipblip cannot tell its weights are random
    with torch.no_grad():
        image = model.encode_image(torch.stack([preprocess(Image.open(p)) for p in photos]), normalize=True)
        text = model.encode_text(tokenizer([f"a photo of a {label}." for label in labels]), normalize=True)
        logits = model.logit_scale.exp() * image @ text.T
        if model.logit_bias is not None:
            want = torch.sigmoid(logits + model.logit_bias).numpy()
        else:
            want = logits.softmax(dim=-1).numpy()
    for row, result in zip(want, doc["results"]):
        got = {label["label"]: label["probability"] for label in result["labels"]}
        assert max(abs(got[label] - p) for label, p in zip(labels, row)) < 1e-4
    scoring = Manifest.load(tiny.exported).model["scoring"]
    assert scoring == ("sigmoid" if model.logit_bias is not None else "softmax")


@pytest.mark.parametrize("arch", ARCHS)
def test_index_and_search(arch, openclip, photos, tmp_path, capsys):
    tiny = openclip(arch)
    root = tmp_path / "photos"
    root.mkdir()
    for photo in photos:
        (root / photo.name).write_bytes(photo.read_bytes())
    Image.new("RGB", (40, 30), (200, 30, 30)).save(root / "red.png")
    db = tmp_path / "photos.db"
    assert run_cli(capsys, "index", tiny.exported, root, "--db", db)[0] == 0
    code, out, err = run_cli(capsys, "search", "--db", db, "--image", root / "red.png", "-k", 3, "--json")
    assert code == 0, err
    hits = json.loads(out)["hits"]
    scores = {hit["path"]: hit["score"] for hit in hits}  # random tiny towers may score other photos as high
    assert len(hits) == 3 and scores[str(root / "red.png")] == pytest.approx(1, abs=1e-5) == max(scores.values())
    code, out, err = run_cli(capsys, "search", "--db", db, "--text", "a woman", "-k", 2, "--json")
    assert code == 0 and len(json.loads(out)["hits"]) == 2, err


def test_the_manifest_says_what_differs(openclip):
    siglip = Manifest.load(openclip("ViT-B-16-SigLIP").exported)
    assert siglip.model["scoring"] == "sigmoid" and siglip.model["logit_bias"] == pytest.approx(-10)
    assert siglip.tokenizer["clean"] == "open_clip:canonicalize" and siglip.tokenizer["max_length"] == 16
    assert siglip.image["resize_mode"] == "squash"
    mobile = Manifest.load(openclip("MobileCLIP2-S0").exported)
    assert mobile.model["architecture"]["image_tower"] == "timm:fastvit_mci0"
    assert mobile.model["architecture"]["folded_modules"] > 0 and not mobile.model["architecture"]["causal_text"]
    assert mobile.image["resample"] == "bilinear" and mobile.tokenizer["clean"] == "open_clip:lower"
    vit = Manifest.load(openclip("ViT-B-32").exported)
    assert [t.name for t in vit.graphs["text_tower"].inputs] == ["input_ids"]
    assert vit.graphs["text_tower"].inputs[0].shape == ["batch", 77]
    assert len(vit.tokenizer["checks"]) == len(CHECK_TEXTS)


def test_a_changed_tokenizer_is_refused_where_the_folder_opens(openclip, tmp_path):
    import shutil

    from clipblip.errors import ModelLoadError

    folder = tmp_path / "copy"
    shutil.copytree(openclip("ViT-B-32").exported, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["tokenizer"]["checks"][2]["ids"][1] += 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="tokenizer check 2"):
        OpenClipEngine.from_dir(folder, provider="cpu", verify=False)


def test_refusals_name_what_is_wrong(openclip, tmp_path, capsys):
    from clipblip.export import export_model

    checkpoint = openclip("ViT-B-32").checkpoint
    capsys.readouterr()
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "open_clip_config.json").write_text(
        (openclip("ViT-B-32").checkpoint / "open_clip_config.json").read_text())
    with pytest.raises(ModelSourceError, match="no open_clip_model.safetensors.*random weights"):
        export_model(str(empty), tmp_path / "out")
    code, _, err = run_cli(capsys, "export", checkpoint, "--out", tmp_path / "att", "--attentions")
    errors = [line for line in err.splitlines() if "error" in line]
    assert code != 0 and len(errors) == 1 and "no attention weights" in errors[0]
    assert not (tmp_path / "att").exists()
    with pytest.raises(ModelSourceError, match="hub is unreachable"):
        export_model("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", tmp_path / "hub")


def test_running_a_folder_imports_no_torch_open_clip_or_timm(openclip, photos):
    import subprocess
    import sys

    code = ("import sys\nfrom clipblip.engine import OpenClipEngine\n"
            f"engine = OpenClipEngine.from_dir({str(openclip('MobileCLIP2-S0').exported)!r}, provider='cpu')\n"
            f"engine.classify([{str(photos[0])!r}], ['a cat', 'a dog &amp; a mojibake cafÃ©'])\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'open_clip', 'timm', 'torchvision', "
            "'transformers', 'ftfy'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['ftfy']"  # open_clip's text cleaning, pure Python


def test_one_tower_folders_hold_and_refuse_what_they_should(openclip, photos, tmp_path, capsys):
    from clipblip.errors import WrongModelError

    tiny = openclip("MobileCLIP2-S0")
    both = OpenClipEngine.from_dir(tiny.exported, provider="cpu")
    for tower in ("image", "text"):
        assert run_cli(capsys, "export", tiny.checkpoint, "--out", tmp_path / tower, "--towers", tower)[0] == 0
        engine = OpenClipEngine.from_dir(tmp_path / tower, provider="cpu")
        assert list(engine.manifest.graphs) == [f"{tower}_tower"]
        assert engine.manifest.source["fingerprint"] == both.manifest.source["fingerprint"]
        if tower == "image":
            np.testing.assert_allclose(engine.embed_images(photos), both.embed_images(photos), atol=1e-6)
            with pytest.raises(WrongModelError, match="holds only the image tower"):
                engine.embed_texts(["a cat"])
        else:
            np.testing.assert_allclose(engine.embed_texts(ALL_TEXTS), both.embed_texts(ALL_TEXTS), atol=1e-6)
            code, _, err = run_cli(capsys, "classify", tmp_path / tower, photos[0], "--labels", "cat")
            assert code != 0 and "holds only the text tower" in err and len(err.strip().splitlines()) == 1
