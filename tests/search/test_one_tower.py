"""Search with one-tower folders (export --towers image|text): `clipblip index` refuses a text tower alone before
looking at any file; a database indexed by the image tower alone is queried by text with the text tower alone of
the same checkpoint (the same fingerprint), and refuses, in one line, a folder of another checkpoint or without the
tower the query needs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipblip.errors import EXIT_CODES
from clipblip.manifest import Manifest
from clipblip.search import Store, index_paths, search
from tests.helpers import run_cli


@pytest.fixture
def indexed(clip_towers, photos, tmp_path):
    """A database of the two photos, indexed by the image tower alone."""
    db = tmp_path / "photos.db"
    index_paths(db, clip_towers.image, [str(p) for p in photos])
    return db


def test_index_refuses_a_text_tower_alone_before_looking_at_files(clip_towers, photos, tmp_path, capsys, monkeypatch,
                                                                   indexed):
    import clipblip.search.indexer as indexer

    def never(*args):
        raise AssertionError("the paths were scanned")

    monkeypatch.setattr(indexer, "expand", never)
    for db in (tmp_path / "new.db", indexed):  # a new database, and one the image tower built
        code, out, err = run_cli(capsys, "index", clip_towers.text, photos[0], "--db", db)
        assert code == EXIT_CODES["WrongModelError"] == 2 and out == ""
        assert err.strip() == (f"clipblip: error: {clip_towers.text}: holds only the text tower (exported with "
                               f"--towers text); indexing images needs the image tower: export with --towers image "
                               f"or both")
    assert not (tmp_path / "new.db").exists()


def test_the_text_tower_alone_of_the_same_checkpoint_queries_it(clip_towers, photos, indexed, tmp_path, capsys):
    with Store.open(indexed) as store:
        assert store.meta.model_fingerprint == Manifest.load(clip_towers.image).source["fingerprint"]
    whole = tmp_path / "whole.db"
    index_paths(whole, clip_towers.both, [str(p) for p in photos])
    expected = search(whole, text="a woman in uniform", k=2)
    code, out, err = run_cli(capsys, "search", "--db", indexed, "--text", "a woman in uniform", "-k", "2",
                             "--model", clip_towers.text, "--json")
    assert code == 0, err
    hits = json.loads(out)["hits"]
    assert [h["path"] for h in hits] == [h.path for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected], atol=1e-5)
    assert search(indexed, image=photos[1], k=1)[0].path == str(photos[1])  # its own folder embeds images


def test_queries_without_the_tower_they_need_are_refused_in_one_line(clip_towers, tower_folders, photos, indexed,
                                                                    capsys):
    code, out, err = run_cli(capsys, "search", "--db", indexed, "--text", "a cat")
    assert code == EXIT_CODES["WrongModelError"] and out == ""
    assert err.strip().splitlines()[-1] == (
        f"clipblip: error: {indexed}: was indexed with {clip_towers.image}, which holds only the image tower; a text "
        f"query needs the text tower: give --model DIR, an export of the same checkpoint with --towers text or both")
    code, out, err = run_cli(capsys, "search", "--db", indexed, "--image", photos[0], "--model", clip_towers.text)
    assert code == EXIT_CODES["WrongModelError"] and out == ""
    assert (f"{clip_towers.text}: holds only the text tower (exported with --towers text); an image query needs the "
            f"image tower") in err
    other = tower_folders("siglip-tiny").text  # another checkpoint's text tower: its vectors are not comparable
    code, out, err = run_cli(capsys, "search", "--db", indexed, "--text", "a cat", "--model", other)
    assert code == EXIT_CODES["DatabaseError"] == 17 and "another model" in err
    assert len([line for line in err.splitlines() if line.startswith("clipblip: error:")]) == 1
