import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clipblip.cli import main
from tests.helpers import reference_image_embeddings, reference_text_embeddings, run_cli


def test_embed_images_and_texts_match_transformers(tiny_clip, photos, tmp_path, capsys):
    code, _, _ = run_cli(capsys, "embed", tiny_clip.exported, "--images", *photos, "--out", tmp_path / "img.npz")
    assert code == 0
    ref = reference_image_embeddings(tiny_clip.model, tiny_clip.processor, photos)
    saved = np.load(tmp_path / "img.npz")
    assert np.abs(saved["embeddings"] - ref).max() < 1e-4 and list(saved["items"]) == [str(p) for p in photos]

    texts = ["a cat", "", "猫 🐱"]
    code, _, _ = run_cli(capsys, "embed", tiny_clip.exported, "--texts", *texts, "--out", tmp_path / "txt.npz")
    assert code == 0
    ref = reference_text_embeddings(tiny_clip.model, tiny_clip.processor.tokenizer, texts)
    saved = np.load(tmp_path / "txt.npz")
    assert np.abs(saved["embeddings"] - ref).max() < 1e-4 and list(saved["items"]) == texts


def test_embed_refuses_to_overwrite(tiny_clip, photos, tmp_path, capsys):
    target = tmp_path / "e.npz"
    assert run_cli(capsys, "embed", tiny_clip.exported, "--texts", "x", "--out", target)[0] == 0
    code, _, err = run_cli(capsys, "embed", tiny_clip.exported, "--texts", "y", "z", "--out", target)
    assert code == 6 and "--force" in err and list(np.load(target)["items"]) == ["x"]
    assert run_cli(capsys, "embed", tiny_clip.exported, "--texts", "y", "z", "--out", target, "--force")[0] == 0
    assert list(np.load(target)["items"]) == ["y", "z"]


def test_embed_npy_is_the_matrix_of_the_items_embedded_in_input_order(tiny_clip, photos, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    target = tmp_path / "e.npy"
    code, _, err = run_cli(capsys, "embed", tiny_clip.exported, "--images", photos[0], bad, photos[1], "--out", target)
    assert code != 0 and f"no row for item(s) 1 ({bad})" in err
    ref = reference_image_embeddings(tiny_clip.model, tiny_clip.processor, [photos[0], photos[1]])
    saved = np.load(target)
    assert saved.dtype == np.float32 and np.abs(saved - ref).max() < 1e-4

    code, _, err = run_cli(capsys, "embed", tiny_clip.exported, "--texts", "x", "--out", target, "--force")
    assert code == 0 and np.load(target).shape == (1, saved.shape[1])  # clipblip's own .npy: replaced
    mine = tmp_path / "mine.npy"
    np.save(mine, np.arange(3))
    code, _, err = run_cli(capsys, "embed", tiny_clip.exported, "--texts", "x", "--out", mine, "--force")
    assert code == 6 and "was not written by clipblip" in err and list(np.load(mine)) == [0, 1, 2]
    code, _, err = run_cli(capsys, "embed", tiny_clip.exported, "--texts", "x", "--out", tmp_path / "e.csv")
    assert code == 2 and "--out" in err and ".npy" in err and not (tmp_path / "e.csv").exists()


def test_similarity_json_and_plot(tiny_clip, photos, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "similarity", tiny_clip.exported, "--images", *photos, "--texts", "a", "b c",
                       "--json", "--plot", tmp_path / "s.png")
    assert code == 0
    doc = json.loads(out)
    assert np.asarray(doc["similarity"]).shape == (2, 2) and doc["texts"] == ["a", "b c"]
    assert doc["random_weights"] is False
    with Image.open(tmp_path / "s.png") as png:
        assert png.size[0] > 200
    code, out, _ = run_cli(capsys, "similarity", tiny_clip.exported, "--images", *photos, "--texts", "a", "b c")
    assert code == 0 and photos[0].name in out


def test_classify_json_and_table(tiny_clip, photos, capsys):
    code, out, _ = run_cli(capsys, "classify", tiny_clip.exported, *photos, "--labels", "cat", "dog", "--json")
    assert code == 0
    results = json.loads(out)["results"]
    assert [r["image"] for r in results] == [str(p) for p in photos]
    probs = [l["probability"] for l in results[0]["labels"]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
    code, out, _ = run_cli(capsys, "classify", tiny_clip.exported, photos[0], "--labels", "cat", "dog")
    assert code == 0 and "%" in out


def test_errors_are_one_line_and_debug_shows_traceback(tiny_clip, tmp_path, capsys):
    code, out, err = run_cli(capsys, "classify", tiny_clip.exported, tmp_path / "nope.jpg", "--labels", "cat")
    assert code == 9 and out == ""
    assert err.strip().count("\n") == 0 and "nope.jpg" in err
    code, _, err = run_cli(capsys, "classify", tmp_path / "no-model", tmp_path / "x.jpg", "--labels", "cat")
    assert code == 7 and "no-model" in err
    with pytest.raises(Exception, match="nope.jpg"):
        main(["--debug", "classify", str(tiny_clip.exported), str(tmp_path / "nope.jpg"), "--labels", "cat"])


def test_export_cli_reports_random_weights(tmp_path, capsys):
    code, out, err = run_cli(capsys, "export", "random:clip-tiny", "--out", tmp_path / "m")
    assert code == 0, err
    assert "RANDOM weights" in err and "image_tower" in out
    code, _, err = run_cli(capsys, "export", "random:clip-tiny", "--out", tmp_path / "m")
    assert code == 6 and err.strip().count("\n") == 0


def test_caption_vqa_and_match_commands(blip_caption, blip_vqa, blip_itm, photos, tmp_path, capsys):
    from clipblip.engine import BlipEngine

    code, out, _ = run_cli(capsys, "caption", blip_caption.exported, *photos, "--prompt", "a picture of",
                       "--max-new-tokens", 6, "--json")
    assert code == 0
    doc = json.loads(out)
    expected = BlipEngine.from_dir(blip_caption.exported).generate_captions(photos, "a picture of", 6)
    assert [r["image"] for r in doc["results"]] == [str(p) for p in photos]
    assert [r["token_ids"] for r in doc["results"]] == [g.token_ids for g in expected]
    assert [r["text"] for r in doc["results"]] == [g.text for g in expected]

    code, out, _ = run_cli(capsys, "vqa", blip_vqa.exported, *photos, "--question", "what is it?")
    assert code == 0 and out.count("\n") == 2 and str(photos[1]) in out

    code, out, _ = run_cli(capsys, "match", blip_itm.exported, "--images", *photos, "--texts", "a", "b",
                       "--json", "--plot", tmp_path / "m.png")
    assert code == 0
    doc = json.loads(out)
    assert np.asarray(doc["itm"]).shape == np.asarray(doc["itc"]).shape == (2, 2)
    assert (tmp_path / "m.png").stat().st_size > 0

    code, _, err = run_cli(capsys, "caption", blip_itm.exported, *photos)
    assert code == 2 and "--task caption" in err
    code, _, err = run_cli(capsys, "caption", blip_caption.exported, photos[0], "--max-new-tokens", 0)
    assert code == 11 and "max_new_tokens" in err


def test_viz_commands(clip_with_attentions, blip_caption_with_attentions, blip_caption, photos, tmp_path, capsys):
    code, _, err = run_cli(capsys, "viz", "toy-attention", "--out", tmp_path / "toy.png")
    assert code == 0 and Image.open(tmp_path / "toy.png").size[0] > 800
    code, _, _ = run_cli(capsys, "viz", "attention", clip_with_attentions.exported, photos[0], "--text", "a cat",
                     "--layer", 1, "--head", 0, "--out", tmp_path / "clip.png")
    assert code == 0 and (tmp_path / "clip.png").exists() and (tmp_path / "clip-text.png").exists()
    code, _, _ = run_cli(capsys, "viz", "attention", blip_caption_with_attentions.exported, photos[0], "--rollout",
                     "--out", tmp_path / "blip.png")
    assert code == 0 and (tmp_path / "blip.png").exists() and (tmp_path / "blip-text.png").exists()
    code, out, _ = run_cli(capsys, "viz", "cross-attention", blip_caption_with_attentions.exported, photos[0],
                       "--max-new-tokens", 4, "--out", tmp_path / "cross.png")
    assert code == 0 and (tmp_path / "cross.png").exists() and out.strip()
    code, _, err = run_cli(capsys, "viz", "cross-attention", blip_caption.exported, photos[0], "--out", tmp_path / "x.png")
    assert code == 2 and "--attentions" in err and not (tmp_path / "x.png").exists()
    code, _, err = run_cli(capsys, "viz", "attention", clip_with_attentions.exported, photos[0], "--head", "7",
                       "--layer", 0, "--out", tmp_path / "y.png")
    assert code == 2 and "head 7" in err


def test_tables_line_up_with_wide_characters():
    from clipblip.cli.common import display_width, format_table

    lines = format_table(["a.png", "猫猫.png"], ["一只猫", "穿制服的女人", "a blue box"],
                         [[0.1, 0.2, 0.3], [0.4, -0.5, 0.6]]).splitlines()
    assert len({display_width(line) for line in lines}) == 1
    starts = [display_width(line[: line.index("0.")]) for line in lines[1:]]  # where the first value begins
    assert starts[0] == starts[1] and display_width(lines[0]) == display_width(lines[1])
