"""`clipblip export --towers image|text|both`: a dual encoder's one tower alone, in a folder that holds only its
graph, says so in its manifest, embeds exactly as the whole export does and checks itself; BLIP is refused up front."""

from __future__ import annotations

import numpy as np
import pytest

from clipblip import families
from clipblip.engine.opening import open_engine
from clipblip.errors import EXIT_CODES, UsageError
from clipblip.manifest import Manifest
from tests.helpers import TEXTS, run_cli

PRESETS = ["clip-tiny", "siglip-tiny"]


@pytest.fixture(params=PRESETS)
def towers(request, tower_folders):
    return tower_folders(request.param)


def test_each_folder_holds_its_tower_alone_and_says_so(towers):
    for tower, other in [("image", "text"), ("text", "image")]:
        folder = getattr(towers, tower)
        manifest = Manifest.load(folder)
        assert manifest.model["towers"] == [tower] and manifest.towers == [tower] and manifest.one_tower == tower
        assert manifest.tasks == ["embed"]  # similarity and classify need both towers
        assert list(manifest.graphs) == [f"{tower}_tower"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [f"{tower}_tower.checks.npz", f"{tower}_tower.onnx", f"{tower}_tower.onnx.data", "manifest.json",
             "tokenizer.json"])
        # the other tower was never traced: no step of the export names it
        assert not [step for step in manifest.export["steps"] if step.startswith(f"{other}_tower")]
    whole = Manifest.load(towers.both)
    assert whole.model["towers"] == ["image", "text"] and whole.one_tower is None
    assert whole.tasks == ["embed", "similarity", "classify"] and sorted(whole.graphs) == ["image_tower", "text_tower"]
    fingerprints = {Manifest.load(f).source["fingerprint"] for f in (towers.both, towers.image, towers.text)}
    assert len(fingerprints) == 1 and len(fingerprints.pop()) == 64  # one checkpoint, whatever the towers


def test_the_kept_tower_embeds_as_the_whole_export_does(towers, photos, odd_images):
    whole = open_engine(towers.both, provider="cpu")
    images = photos + list(odd_images.values())[:3]
    image_only, text_only = open_engine(towers.image, provider="cpu"), open_engine(towers.text, provider="cpu")
    assert list(image_only.sessions) == ["image_tower"] and list(text_only.sessions) == ["text_tower"]
    np.testing.assert_allclose(image_only.embed_images(images), whole.embed_images(images), rtol=0, atol=1e-5)
    texts = [t for t in TEXTS if t]
    np.testing.assert_allclose(text_only.embed_texts(texts), whole.embed_texts(texts), rtol=0, atol=1e-5)
    assert text_only.providers == ["CPUExecutionProvider"]


def test_verify_passes_on_each_one_tower_folder(towers, capsys):
    for tower in ("image", "text"):
        code, out, err = run_cli(capsys, "verify", getattr(towers, tower), "--provider", "cpu")
        assert code == 0, err
        lines = out.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{tower}_tower ") and lines[0].endswith("pass")


def test_the_cli_writes_one_tower_and_says_so(tmp_path, capsys):
    out = tmp_path / "text"
    code, stdout, err = run_cli(capsys, "export", "random:clip-tiny", "--towers", "text", "--out", out)
    assert code == 0, err
    assert "towers: the text tower alone; the folder does embed" in stdout
    assert stdout.splitlines()[0].startswith("text_tower: ") and "image_tower" not in stdout
    assert Manifest.load(out).towers == ["text"]


def test_blip_is_refused_before_anything_loads(tmp_path, capsys, monkeypatch):
    import clipblip.export as export

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(export, "load_source", never)
    for tower in ("image", "text"):
        with pytest.raises(UsageError) as refused:
            export.export_model("random:blip-tiny", tmp_path / "blip", task="caption", towers=tower)
        message = str(refused.value)
        assert len(message.splitlines()) == 1
        assert message.startswith(f"--towers {tower}: random:blip-tiny is a BLIP model") and "together" in message
    code, out, err = run_cli(capsys, "export", "random:blip-tiny", "--towers", "image", "--out", tmp_path / "blip")
    assert code == EXIT_CODES["UsageError"] == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--towers image" in err and "BLIP" in err
    with pytest.raises(UsageError, match="--towers left: choose image, text or both"):
        export.export_model("random:clip-tiny", tmp_path / "clip", towers="left")
    assert list(tmp_path.iterdir()) == []


def test_which_families_split_is_read_from_their_tasks():
    for name in ("clip", "chinese_clip", "siglip"):
        assert families.family(name).towers == {"image": "image_tower", "text": "text_tower"}
        assert [t.name for t in families.family(name).tasks if t.one_tower] == ["embed"]
    assert families.family("blip").towers == {}
    # a new CLIP-like family is a registry entry of the dual-encoder tasks: it splits with no code of its own
    new = families.Family(name="new", title="New", model_type="new", exporter="", engine="", presets=(),
                          tasks=families._dual_encoder_tasks("NewModel", "someone/new"))
    assert new.towers == families.family("clip").towers
    assert families.task_graphs("clip", ["embed"], ["text"]) == ["text_tower"]
    assert families.task_graphs("clip", ["embed", "similarity"]) == ["image_tower", "text_tower"]
    assert families.tower_tasks("siglip", ["embed", "similarity", "classify"], ["image"]) == ["embed"]
