"""`clipblip index` / `clipblip search` and clipblip.search: exact cosine search, incremental and resumable
indexing, ITM re-ranking, refusals (another model, damaged databases)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import numpy as np
import pytest
from PIL import Image

from clipblip.engine import BlipEngine, ClipEngine
from clipblip.errors import EXIT_CODES
from clipblip.search import IndexReport, SearchHit, Store, index_paths, search
from tests.helpers import run_cli

VALID = ["red.png", "green.jpg", "blue.png", "with space/yellow img.png", "été 写真.png", "hopper.jpg", "minduka.png"]
BROKEN = ["x.jpg", "truncated.jpg"]  # empty; cut in half
TEXTS = ["a photo of a woman", "a blue box", "red"]


@pytest.fixture
def collection(tmp_path, photos):
    root = tmp_path / "photos"
    (root / "with space").mkdir(parents=True)
    Image.new("RGB", (40, 30), (220, 20, 20)).save(root / "red.png")
    Image.new("RGB", (64, 64), (20, 200, 40)).save(root / "green.jpg", quality=90)
    Image.new("RGB", (20, 50), (10, 20, 230)).save(root / "blue.png")
    Image.new("RGB", (33, 33), (240, 230, 10)).save(root / "with space" / "yellow img.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 36, 3), dtype=np.uint8)).save(root / "été 写真.png")
    shutil.copy(photos[0], root / "hopper.jpg")
    shutil.copy(photos[1], root / "minduka.png")
    (root / "notes.txt").write_text("not an image")
    (root / "x.jpg").write_bytes(b"")
    data = (root / "hopper.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(scope="module")
def clip_dir(clip_with_attentions):
    return clip_with_attentions.exported


def absolute(root, names):
    return [os.path.abspath(root / n) for n in names]


def db_contents(db) -> dict[str, np.ndarray]:
    with Store.open(db) as store:
        rows, vectors = store.vectors()
    return dict(zip([row.key for row in rows], vectors))


def brute_force(engine, paths, query_vector):
    vectors = engine.embed_images(paths)
    return dict(zip(paths, (vectors @ query_vector).tolist()))


def test_index_then_search_equals_brute_force_cosine(tmp_path, collection, clip_dir, capsys):
    db = tmp_path / "photos.db"
    code, out, err = run_cli(capsys, "index", clip_dir, collection, "--db", db, "--json")
    report = json.loads(out)
    assert code == EXIT_CODES["PartialFailure"] == 16, err
    assert (report["embedded"], report["unchanged"], report["removed"], report["skipped"]) == (len(VALID), 0, 0, 1)
    assert sorted(f["path"] for f in report["failed"]) == sorted(absolute(collection, BROKEN))
    assert all(f["path"] in f["error"] for f in report["failed"]) and "truncated.jpg" in err and "Traceback" not in err

    engine = ClipEngine.from_dir(clip_dir)
    paths = absolute(collection, VALID)
    stored = db_contents(db)
    assert sorted(stored) == sorted(paths)
    np.testing.assert_allclose(np.stack([stored[p] for p in paths]), engine.embed_images(paths), atol=1e-6)

    queries = [("--text", t, engine.embed_texts([t])[0]) for t in TEXTS]
    queries.append(("--image", str(collection / "hopper.jpg"), engine.embed_images([collection / "hopper.jpg"])[0]))
    for option, value, vector in queries:
        expected = brute_force(engine, paths, vector)
        code, out, err = run_cli(capsys, "search", "--db", db, option, value, "-k", 50, "--json")
        assert code == 0, err
        document = json.loads(out)
        hits = document["hits"]
        assert document["query"] == {option[2:]: value}
        assert len(hits) == len(VALID)  # k above the count: everything
        assert [h["path"] for h in hits] == sorted(expected, key=lambda p: -expected[p])
        for hit in hits:
            assert hit["score"] == pytest.approx(expected[hit["path"]], abs=1e-5) and "itc" not in hit
    # text output: `score  path`, best first, k lines
    code, out, _ = run_cli(capsys, "search", "--db", db, "--image", collection / "hopper.jpg", "-k", 2)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and lines[0].endswith(str(collection / "hopper.jpg"))
    assert float(lines[0].split()[0]) == pytest.approx(1.0, abs=1e-4)
    # the Python API gives the same
    hits = search(db, text=TEXTS[0], k=3)
    assert len(hits) == 3 and all(isinstance(h, SearchHit) and h.itc is None for h in hits)


def test_reindex_embeds_only_new_and_changed_files(tmp_path, collection, clip_dir, monkeypatch):
    db = tmp_path / "photos.db"
    first = index_paths(db, clip_dir, [collection], max_batch=3)
    assert isinstance(first, IndexReport) and first.embedded == len(VALID) and len(first.failed) == 2
    before = db_contents(db)

    embedded: list[str] = []
    original = ClipEngine.embed_images

    def counting(self, images, **kwargs):
        embedded.extend(os.fspath(i) for i in images)
        return original(self, images, **kwargs)

    monkeypatch.setattr(ClipEngine, "embed_images", counting)
    again = index_paths(db, clip_dir, [collection])
    assert (again.embedded, again.unchanged, again.removed) == (0, len(VALID), 0)
    assert sorted(embedded) == sorted(absolute(collection, BROKEN))  # failed files are tried again

    embedded.clear()
    Image.new("RGB", (12, 12), (0, 0, 0)).save(collection / "new.png")
    Image.new("RGB", (41, 30), (5, 5, 5)).save(collection / "red.png")  # changed
    green = collection / "green.jpg"
    os.utime(green, ns=(0, 1_000_000_000))  # touched, same bytes
    (collection / "blue.png").unlink()
    (collection / "x.jpg").unlink()
    report = index_paths(db, clip_dir, [collection])
    assert (report.embedded, report.unchanged, report.removed) == (2, len(VALID) - 2, 1)
    assert sorted(embedded) == sorted(absolute(collection, ["new.png", "red.png", "truncated.jpg"]))
    after = db_contents(db)
    assert sorted(after) == sorted(absolute(collection, ["new.png"] + [n for n in VALID if n != "blue.png"]))
    assert not np.allclose(after[str(collection / "red.png")], before[str(collection / "red.png")])
    np.testing.assert_array_equal(after[str(green)], before[str(green)])
    with Store.open(db) as store:
        assert store.entries()[str(green)].mtime_ns == 1_000_000_000

    # an entry outside the paths given stays, even when its file is gone
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (9, 9), (1, 2, 3)).save(other / "o.png")
    index_paths(db, clip_dir, [other / "o.png"])
    (other / "o.png").unlink()
    assert index_paths(db, clip_dir, [collection]).removed == 0
    assert str(other / "o.png") in db_contents(db)
    assert index_paths(db, clip_dir, [other]).removed == 1  # a folder left without images: its entries go


def test_an_interrupted_index_resumes_to_the_same_database(tmp_path, collection, clip_dir, capsys, monkeypatch):
    full = tmp_path / "full.db"
    code, _, err = run_cli(capsys, "index", clip_dir, collection, "--db", full, "--max-batch", 2)
    assert code == 16, err

    calls = []
    original = ClipEngine.embed_images

    def interrupted(self, images, **kwargs):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, images, **kwargs)

    monkeypatch.setattr(ClipEngine, "embed_images", interrupted)
    db = tmp_path / "resumed.db"
    code, out, err = run_cli(capsys, "index", clip_dir, collection, "--db", db, "--max-batch", 2, "--json")
    assert code == 130 and "interrupted" in err and json.loads(out)["interrupted"] is True
    partial = db_contents(db)
    assert 0 < len(partial) <= 2  # the first batch was committed, the second lost
    monkeypatch.setattr(ClipEngine, "embed_images", original)
    code, out, err = run_cli(capsys, "index", clip_dir, collection, "--db", db, "--max-batch", 2, "--json")
    assert code == 16 and json.loads(out)["unchanged"] == len(partial)
    expected, resumed = db_contents(full), db_contents(db)
    assert sorted(resumed) == sorted(expected)
    for path in expected:
        np.testing.assert_array_equal(resumed[path], expected[path])


def test_rerank_orders_by_itm_probability(tmp_path, collection, clip_dir, blip_itm, capsys):
    paths = absolute(collection, VALID)
    text = "a photo of a woman in uniform"
    match = BlipEngine.from_dir(blip_itm.exported).match(paths, [text])
    itm, itc = dict(zip(paths, match.itm[:, 0].tolist())), dict(zip(paths, match.itc[:, 0].tolist()))
    best = sorted(paths, key=lambda p: -itm[p])

    blip_db = tmp_path / "blip.db"
    code, _, err = run_cli(capsys, "index", blip_itm.exported, collection, "--db", blip_db)
    assert code == 16, err
    clip_db = tmp_path / "clip.db"
    code, _, err = run_cli(capsys, "index", clip_dir, collection, "--db", clip_db)
    assert code == 16, err

    for db, rerank in ((blip_db, []), (clip_db, [blip_itm.exported])):
        code, out, err = run_cli(capsys, "search", "--db", db, "--text", text, "-k", 3, "--rerank", *rerank, "--json")
        assert code == 0, err
        hits = json.loads(out)["hits"]
        assert [h["path"] for h in hits] == best[:3]
        for hit in hits:
            assert hit["score"] == pytest.approx(itm[hit["path"]], abs=1e-4)
        if db == blip_db:  # the cosine of BLIP's ITC projections, kept as itc
            assert all(h["itc"] == pytest.approx(itc[h["path"]], abs=1e-4) for h in hits)
    code, _, err = run_cli(capsys, "search", "--db", clip_db, "--text", text, "--rerank", clip_dir)
    assert code == 2 and "--rerank (BLIP's ITM head) needs a folder that does match" in err and "search database" \
        not in err

    code, out, err = run_cli(capsys, "search", "--db", clip_db, "--text", text, "--rerank")
    assert code == EXIT_CODES["UsageError"] and "ITM_DIR" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "search", "--db", blip_db, "--image", paths[0], "--rerank")
    assert code == EXIT_CODES["UsageError"] and "--text" in err


def test_a_query_through_another_model_is_refused(tmp_path, collection, clip_dir, blip_itm, capsys):
    db = tmp_path / "photos.db"
    index_paths(db, clip_dir, [collection / "red.png", collection / "hopper.jpg"])
    code, out, err = run_cli(capsys, "search", "--db", db, "--text", "red", "--model", blip_itm.exported)
    assert code == EXIT_CODES["DatabaseError"] == 17 and out == ""
    assert str(db) in err and "another model" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "index", blip_itm.exported, collection, "--db", db)
    assert code == 17 and "another model" in err

    # a copy of the database searched with a copy of its model folder (the same manifest) works
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(clip_dir, elsewhere / "model")
    shutil.copy(db, elsewhere / "copy.db")
    code, out, err = run_cli(capsys, "search", "--db", elsewhere / "copy.db", "--text", "red", "--model",
                             elsewhere / "model", "--json")
    assert code == 0, err
    assert json.loads(out)["hits"] == [h.to_dict() for h in search(db, text="red")]


def test_missing_damaged_and_foreign_databases_are_clear_errors(tmp_path, collection, clip_dir, capsys):
    db = tmp_path / "photos.db"
    index_paths(db, clip_dir, [collection / "red.png"])
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(db.read_bytes()[:300])
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE t (x)")
    connection.close()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    for bad in (tmp_path / "missing.db", truncated, garbage, foreign, empty, tmp_path):
        code, out, err = run_cli(capsys, "search", "--db", bad, "--text", "red")
        assert code == 17 and out == "" and str(bad) in err, (bad, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    before = garbage.read_bytes()
    code, _, err = run_cli(capsys, "index", clip_dir, collection / "red.png", "--db", garbage)
    assert code == 17 and garbage.read_bytes() == before  # never written into
    # a failing image query names its file
    code, _, err = run_cli(capsys, "search", "--db", db, "--image", collection / "x.jpg")
    assert code == EXIT_CODES["ImageError"] and "x.jpg" in err
