"""A folder exported with one tower alone (--towers image|text): the engine opens that graph only, and what needs
the other tower is refused in one line naming the folder, the tower it holds and the export that would do, by the
engine and by the commands."""

from __future__ import annotations

import pytest

from clipblip.engine import ClipEngine
from clipblip.engine.opening import open_engine
from clipblip.errors import EXIT_CODES, WrongModelError
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def engines(clip_towers):
    return {tower: ClipEngine.from_dir(getattr(clip_towers, tower), provider="cpu") for tower in ("image", "text")}


def refused(call) -> str:
    with pytest.raises(WrongModelError) as error:
        call()
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_each_engine_opens_its_tower_and_names_it(engines, clip_towers):
    for tower, engine in engines.items():
        assert list(engine.sessions) == [f"{tower}_tower"] and engine.tasks == ["embed"]
        assert engine.providers == ["CPUExecutionProvider"]
        assert f"towers=['{tower}']" in repr(engine)


def test_the_missing_modality_is_refused_in_one_line(engines, clip_towers, photos):
    image, text = engines["image"], engines["text"]
    message = refused(lambda: text.embed_images(photos))
    assert message == (f"{clip_towers.text}: holds only the text tower (exported with --towers text); embedding images "
                       f"needs the image tower: export with --towers image or both")
    message = refused(lambda: image.embed_texts(["a cat"]))
    assert message.startswith(f"{clip_towers.image}: holds only the image tower (exported with --towers image)")
    assert "embedding texts needs the text tower: export with --towers text or both" in message
    for engine in (image, text):
        assert "similarity needs both towers: export with --towers both" in refused(
            lambda: engine.similarity(photos, ["a cat"]))
        assert "zero-shot classification needs both towers" in refused(lambda: engine.classify(photos, ["cat"]))
    assert "image attention needs the image tower" in refused(lambda: text.image_attentions(photos[0]))
    assert "text attention needs the text tower" in refused(lambda: image.text_attentions("a cat"))
    assert image.embed_images([]).shape == (0, image.embed_dim)  # what it holds still works


def test_a_command_that_needs_both_towers_is_refused_before_loading(clip_towers):
    message = refused(lambda: open_engine(clip_towers.image, "classify", needed_by="`clipblip classify`"))
    assert message == (f"{clip_towers.image}: holds only the image tower (exported with --towers image); "
                       f"`clipblip classify` needs both towers: export with --towers both (the default)")


def test_the_commands_refuse_with_the_usual_exit_code(clip_towers, photos, tmp_path, capsys):
    runs = [
        ("embed", clip_towers.text, "--images", photos[0], "--out", tmp_path / "e.npy"),
        ("embed", clip_towers.image, "--texts", "a cat", "--json"),
        ("classify", clip_towers.image, photos[0], "--labels", "cat", "dog"),
        ("similarity", clip_towers.text, "--images", photos[0], "--texts", "a cat"),
    ]
    for argv in runs:
        code, out, err = run_cli(capsys, *argv, "--provider", "cpu")
        assert code == EXIT_CODES["WrongModelError"] == 2, (argv, err)
        errors = [line for line in err.splitlines() if line.startswith("clipblip: error:")]
        assert len(errors) == 1 and str(argv[1]) in errors[0] and "tower" in errors[0], (argv, err)
        assert out == ""
    assert not (tmp_path / "e.npy").exists()
    code, out, err = run_cli(capsys, "embed", clip_towers.text, "--texts", "a cat", "--json", "--provider", "cpu")
    assert code == 0, err
