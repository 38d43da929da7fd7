"""The first hour: images as files, folders and globs; single items and encoded bytes in the API;
similarity --top-k; progress bars; --debug anywhere; usage of the mistyped command; --version; repr."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from clipblip import __version__
from clipblip.cli import main
from clipblip.inputs import expand_images
from clipblip.cli.progress import ProgressBar
from clipblip.engine import BlipEngine, ClipEngine
from clipblip.errors import ImageError, PartialFailure, UsageError
from tests.helpers import run_cli


@pytest.fixture
def album(photos, tmp_path):
    """photos/ with images at two depths, a text file, a hidden file, and an empty sub-folder."""
    root = tmp_path / "album"
    (root / "2024" / "summer").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "b.jpg").write_bytes(photos[0].read_bytes())
    (root / "2024" / "a.PNG").write_bytes(photos[1].read_bytes())
    (root / "2024" / "summer" / "c.jpeg").write_bytes(photos[0].read_bytes())
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.jpg").write_bytes(b"")
    return root


def test_folders_and_globs_expand_to_image_files(album):
    found = expand_images([str(album)])
    assert found.paths == [str(album / p) for p in ("b.jpg", "2024/a.PNG", "2024/summer/c.jpeg")]  # stable order
    assert found.skipped == 1  # notes.txt; hidden files are left out
    found = expand_images([f"{album}/**/*.jp*g"])
    assert sorted(found.paths) == sorted(str(album / p) for p in ("b.jpg", "2024/summer/c.jpeg"))
    found = expand_images([f"{album}/*"])
    assert found.paths == [str(album / "b.jpg")] and found.skipped == 1
    with pytest.raises(UsageError, match="empty: a folder with no image files"):
        expand_images([str(album / "empty")])
    with pytest.raises(UsageError, match=r"\*.gif: the pattern matches no image file"):
        expand_images([f"{album}/*.gif"])
    assert expand_images(["missing.jpg"]).paths == ["missing.jpg"]  # fails later, as its own item


def test_commands_take_folders_and_report_skipped_files(clip_with_attentions, blip_caption, album, capsys):
    code, out, err = run_cli(capsys, "classify", clip_with_attentions.exported, album, "--labels", "a", "b", "--json")
    results = json.loads(out)["results"]
    assert code == 0 and len(results) == 3 and "skipped 1 file" in err
    code, out, _ = run_cli(capsys, "caption", blip_caption.exported, f"{album}/**/*.jpeg", "--max-new-tokens", 3)
    assert code == 0 and out.count("\n") == 1 and "c.jpeg" in out
    code, out, _ = run_cli(capsys, "embed", clip_with_attentions.exported, "--images", album, "--json")
    assert code == 0 and len(json.loads(out)["results"]) == 3


def test_similarity_top_k_sorts_each_row(clip_with_attentions, photos, capsys):
    texts = ["a cat", "a box of pencils", "a woman", "a dog"]
    code, out, _ = run_cli(capsys, "similarity", clip_with_attentions.exported, "--images", *photos, "--texts", *texts,
                       "--top-k", 2, "--json")
    doc = json.loads(out)
    assert code == 0
    for row, ranked in zip(doc["similarity"], doc["top_k"]):
        best = sorted(range(len(texts)), key=lambda j: -row[j])[:2]
        assert [hit["index"] for hit in ranked] == best and [hit["text"] for hit in ranked] == [texts[j] for j in best]
    code, out, _ = run_cli(capsys, "similarity", clip_with_attentions.exported, "--images", photos[0], "--texts", *texts,
                       "--top-k", 3)
    lines = out.splitlines()
    scores = [float(line.split()[0]) for line in lines[1:]]
    assert code == 0 and len(lines) == 4 and scores == sorted(scores, reverse=True)


def test_single_items_and_encoded_bytes(clip_with_attentions, blip_caption, photos):
    clip = ClipEngine.from_dir(clip_with_attentions.exported)
    one = clip.embed_images(str(photos[0]))
    assert one.shape == (1, clip.embed_dim)
    np.testing.assert_allclose(clip.embed_images(photos[0].read_bytes()), one, atol=1e-6)
    np.testing.assert_allclose(clip.embed_images(Image.open(photos[0])), one, atol=1e-6)
    array = np.asarray(Image.open(photos[0]).convert("RGB"))
    assert clip.embed_images(array).shape == (1, clip.embed_dim)
    assert clip.embed_images(np.stack([array[:50, :50]] * 3)).shape == (3, clip.embed_dim)  # (N, H, W, C)
    assert [label for label, _ in clip.classify(photos[0], "cat")[0]] == ["cat"]
    with pytest.raises(ImageError, match="encoded image of 7 bytes: not a readable image"):
        clip.embed_images(b"garbage")
    blip = BlipEngine.from_dir(blip_caption.exported)
    assert len(blip.caption(photos[0].read_bytes(), max_new_tokens=3)) == 1


@pytest.mark.parametrize("empty", [Image.new("RGB", (0, 0)), np.zeros((0, 10, 3), np.uint8), "png"])
def test_a_zero_size_image_is_an_image_error_for_that_item(clip_with_attentions, blip_caption, blip_itm, photos,
                                                           empty):
    if isinstance(empty, str):  # a PNG with no rows cannot even be written by Pillow: a header-only file
        buffer = io.BytesIO()
        Image.new("RGB", (1, 1)).save(buffer, format="PNG")
        data = bytearray(buffer.getvalue())
        data[16:24] = (0).to_bytes(4, "big") + (1).to_bytes(4, "big")  # IHDR width 0
        empty = bytes(data)
    engines = [(ClipEngine.from_dir(clip_with_attentions.exported), lambda e, items: e.embed_images(items)),
               (BlipEngine.from_dir(blip_caption.exported), lambda e, items: e.caption(items, max_new_tokens=2)),
               (BlipEngine.from_dir(blip_itm.exported), lambda e, items: e.match(items, ["a"]))]
    for engine, call in engines:
        with pytest.raises(PartialFailure) as caught:
            call(engine, [photos[0], empty])
        assert list(caught.value.errors) == [1] and isinstance(caught.value.errors[1], ImageError)


def test_debug_after_the_command_and_version(clip_with_attentions, tmp_path, capsys):
    with pytest.raises(Exception, match="nope.jpg"):
        main(["classify", str(clip_with_attentions.exported), str(tmp_path / "nope.jpg"), "--labels", "a", "--debug"])
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"clipblip {__version__}"


def test_a_mistyped_option_shows_that_commands_usage_and_a_close_match(clip_with_attentions, photos, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["caption", str(clip_with_attentions.exported), str(photos[0]), "--promt", "a picture of"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "usage: clipblip caption" in err and "did you mean --prompt?" in err
    with pytest.raises(SystemExit):
        main(["captoin", "x"])
    assert "did you mean 'caption'?" in capsys.readouterr().err


def test_engines_have_a_readable_repr(clip_with_attentions, blip_caption):
    text = repr(ClipEngine.from_dir(clip_with_attentions.exported))
    assert text.startswith("ClipEngine(folder=") and "family='clip'" in text and "providers=[" in text
    assert "precision='fp32'" in text and "tasks=['embed'" in text
    assert "tasks=['caption']" in repr(BlipEngine.from_dir(blip_caption.exported))


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal_and_after_a_delay():
    screen = Terminal()
    with ProgressBar(10, "caption", stream=screen, delay=0) as bar:
        bar.update(4)
        assert "caption [" in screen.getvalue() and "4/10" in screen.getvalue()
        bar.write("a line")
        assert "a line\n" in screen.getvalue()
    assert screen.getvalue().endswith("\r\x1b[K")  # the bar is cleared at the end
    quiet, pipe = Terminal(), io.StringIO()
    with ProgressBar(10, "x", stream=quiet, delay=60) as slow, ProgressBar(10, "x", stream=pipe, delay=0) as piped:
        slow.update(5)
        piped.update(5)
    assert quiet.getvalue() == "" and pipe.getvalue() == ""
