"""Outputs never destroy a user's data: --force replaces only what clipblip wrote, files get the
user's umask, nothing is written when nothing succeeded, and every path problem is one clear line."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clipblip import demo
from clipblip.errors import EXIT_CODES
from clipblip.export import export_model
from clipblip.files import written_by_clipblip
from tests.helpers import run_cli


@pytest.fixture
def photo_folder(photos, tmp_path):
    folder = tmp_path / "photos_copy"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.jpg").write_bytes(photos[0].read_bytes())
    return folder


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_force_never_replaces_a_users_folder_or_file(photo_folder, tmp_path, monkeypatch, capsys):
    before = snapshot(photo_folder)
    code, _, err = run_cli(capsys, "export", "random:clip-tiny", "--out", photo_folder, "--force")
    assert code == EXIT_CODES["OutputError"] == 6 and "photos_copy" in err and "never replaced" in err
    assert snapshot(photo_folder) == before

    monkeypatch.chdir(photo_folder)  # `--out . --force` once emptied the current directory
    code, _, err = run_cli(capsys, "export", "random:clip-tiny", "--out", ".", "--force")
    assert code == 6 and snapshot(photo_folder) == before

    plain = tmp_path / "notes.txt"
    plain.write_text("mine")
    code, _, err = run_cli(capsys, "export", "random:clip-tiny", "--out", plain, "--force")
    assert code == 6 and "notes.txt" in err and plain.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos_copy"]  # no staging left


def test_export_force_replaces_its_own_model_folder_but_not_one_with_other_files(tmp_path, capsys):
    out = tmp_path / "model"
    export_model("random:clip-tiny", out)
    assert run_cli(capsys, "export", "random:clip-tiny", "--out", out, "--force")[0] == 0
    (out / "my-notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "export", "random:clip-tiny", "--out", out, "--force")
    assert code == 6 and "model" in err and (out / "my-notes.txt").read_text() == "mine"


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_get_the_users_umask(clip_with_attentions, photos, tmp_path, capsys, mask):
    previous = os.umask(mask)
    try:
        code, _, _ = run_cli(capsys, "embed", clip_with_attentions.exported, "--texts", "a", "--out", tmp_path / "e.npz")
        assert code == 0
        code, _, _ = run_cli(capsys, "similarity", clip_with_attentions.exported, "--images", photos[0], "--texts", "a",
                         "--plot", tmp_path / "s.png")
        assert code == 0
    finally:
        os.umask(previous)
    for name in ("e.npz", "s.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name


def test_force_replaces_clipblip_outputs_only(clip_with_attentions, photos, tmp_path, capsys):
    model = clip_with_attentions.exported
    png, npz = tmp_path / "s.png", tmp_path / "e.npz"
    assert run_cli(capsys, "similarity", model, "--images", photos[0], "--texts", "a", "--plot", png)[0] == 0
    assert run_cli(capsys, "embed", model, "--texts", "a", "--out", npz)[0] == 0
    assert written_by_clipblip(png) and written_by_clipblip(npz)
    assert run_cli(capsys, "similarity", model, "--images", photos[0], "--texts", "b", "--plot", png, "--force")[0] == 0
    assert run_cli(capsys, "embed", model, "--texts", "b", "c", "--out", npz, "--force")[0] == 0
    assert list(np.load(npz)["items"]) == ["b", "c"]

    users_png, users_npz = tmp_path / "holiday.png", tmp_path / "mine.npz"
    Image.open(photos[0]).save(users_png)
    np.savez(users_npz, x=np.ones(3))
    for argv, target in [(["similarity", model, "--images", photos[0], "--texts", "a", "--plot", users_png], users_png),
                         (["embed", model, "--texts", "a", "--out", users_npz], users_npz),
                         (["viz", "toy-attention", "--out", users_png], users_png)]:
        before = target.read_bytes()
        code, out, err = run_cli(capsys, *argv, "--force")
        assert code == 6 and target.name in err and "not written by clipblip" in err and out == ""
        assert target.read_bytes() == before


def test_nothing_is_written_when_every_item_fails(clip_with_attentions, tmp_path, capsys):
    out = tmp_path / "e.npz"
    code, _, err = run_cli(capsys, "embed", clip_with_attentions.exported, "--images", tmp_path / "a.jpg",
                       tmp_path / "b.jpg", "--out", out)
    assert code == EXIT_CODES["PartialFailure"] and not out.exists() and "not written" in err
    assert list(tmp_path.iterdir()) == []


def test_partial_results_keep_the_names_of_their_items(clip_with_attentions, photos, tmp_path, capsys):
    out = tmp_path / "e.npz"
    code, _, _ = run_cli(capsys, "embed", clip_with_attentions.exported, "--images", photos[0], tmp_path / "gone.jpg",
                     photos[1], "--out", out)
    saved = np.load(out)
    assert code == 16 and list(saved["items"]) == [str(photos[0]), str(photos[1])]
    assert list(saved["indices"]) == [0, 2] and np.isfinite(saved["embeddings"]).all()
    assert saved["embeddings"].shape[0] == 2 and str(saved["modality"]) == "image"


@pytest.mark.parametrize("out, words", [("{file}/x.npz", "is not a folder"), ("{dir}", "is a folder"),
                                        ("{dir}/x.csv", "give a name ending in one of them")])
def test_path_problems_are_one_clear_line(clip_with_attentions, tmp_path, capsys, out, words):
    (tmp_path / "regular").write_text("x")
    (tmp_path / "folder.npz").mkdir()
    target = out.format(file=tmp_path / "regular", dir=tmp_path / "folder.npz")
    code, _, err = run_cli(capsys, "embed", clip_with_attentions.exported, "--texts", "a", "--out", target, "--force")
    assert code in (2, 6) and words in err and err.strip().count("\n") == 0 and "internal error" not in err


def test_demo_never_writes_into_a_users_folder(photo_folder, tmp_path):
    before = snapshot(photo_folder)
    with pytest.raises(Exception, match="other files in it"):
        demo.run_demo(photo_folder, progress=lambda message: None)
    assert snapshot(photo_folder) == before


MISSING = """
import sys
sys.modules[{module!r}] = None  # as if the extra that installs it were not installed
from clipblip.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize("module, extra, argv", [
    ("onnx", "export", ["export", "random:clip-tiny", "--out", "{tmp}/m"]),
    ("torch", "export", ["export", "random:clip-tiny", "--out", "{tmp}/m"]),
    ("matplotlib", "viz", ["similarity", "{clip}", "--images", "{photo}", "--texts", "a", "--plot", "{tmp}/s.png"]),
    ("matplotlib", "viz", ["viz", "toy-attention", "--out", "{tmp}/t.png"]),
    ("ray", "ray", ["index", "{clip}", "{photo}", "--db", "{tmp}/p.db", "--ray"]),
    ("open_clip", "open_clip", ["export", "random:openclip-vit-b-32", "--out", "{tmp}/m"]),
])
def test_a_missing_extra_is_named(clip_with_attentions, photos, tmp_path, module, extra, argv):
    filled = [a.format(tmp=tmp_path, clip=clip_with_attentions.exported, photo=photos[0]) for a in argv]
    result = subprocess.run([sys.executable, "-c", MISSING.format(module=module, argv=filled)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"clipblip[{extra}]" in result.stderr and "internal error" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and list(tmp_path.iterdir()) == []


def test_a_folder_of_the_wrong_kind_says_what_to_export(clip_with_attentions, blip_vqa, blip_caption, photos,
                                                        tmp_path, capsys):
    cases = [
        (["caption", clip_with_attentions.exported, photos[0]], "--task caption"),
        (["viz", "cross-attention", clip_with_attentions.exported, photos[0], "--out", tmp_path / "x.png"],
         "--task caption"),
        (["caption", blip_vqa.exported, photos[0]], "--task caption"),
        (["vqa", blip_caption.exported, photos[0], "--question", "what?"], "--task vqa"),
        (["classify", blip_caption.exported, photos[0], "--labels", "a"], "random:clip-base"),
    ]
    for argv, hint in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == EXIT_CODES["WrongModelError"] == 2, err
        assert "clipblip export" in err and hint in err and err.strip().count("\n") == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options, words", [(["--head", "1"], "needs --layer"),
                                            (["--head", "1", "--layer", "0", "--rollout"], "--rollout"),
                                            (["--layer", "0", "--rollout"], "--rollout"),
                                            (["--layer", "9"], "layer 9"),
                                            (["--layer", "0", "--head", "7"], "head 7")])
def test_ignored_or_out_of_range_view_options_are_refused(clip_with_attentions, photos, tmp_path, capsys, options,
                                                          words):
    code, _, err = run_cli(capsys, "viz", "attention", clip_with_attentions.exported, photos[0], *options,
                       "--out", tmp_path / "a.png")
    assert code == 2 and words in err and list(tmp_path.iterdir()) == []


def test_the_json_document_of_embed(clip_with_attentions, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "embed", clip_with_attentions.exported, "--texts", "a cat", "", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["modality"] == "text" and [r["text"] for r in doc["results"]] == ["a cat", ""]
    assert len(doc["results"][0]["embedding"]) == doc["dim"]


@pytest.mark.parametrize("suffix", [".svg", ".pdf", ".png"])
def test_figures_in_every_format_carry_the_mark(clip_with_attentions, photos, tmp_path, capsys, suffix):
    plot = tmp_path / f"s{suffix}"
    argv = ["similarity", clip_with_attentions.exported, "--images", photos[0], "--texts", "a", "--plot", plot]
    assert run_cli(capsys, *argv)[0] == 0 and written_by_clipblip(plot)
    assert run_cli(capsys, *argv, "--force")[0] == 0
    users = tmp_path / f"mine{suffix}"
    users.write_bytes(b"<svg><text>made without clipblip </text></svg>" if suffix == ".svg" else b"%PDF-1.4 clipblip ")
    assert not written_by_clipblip(users)
