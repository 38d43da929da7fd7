"""Chinese-CLIP and SigLIP through everything above the engine, unchanged: the CLI (classify, similarity
with a plot of CJK labels, embed), index and search with a Chinese query, `clipblip serve` (embeddings,
classify, similarity, search) and `viz attention`, on the tiny random presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clipblip import families
from clipblip.export import export_model
from clipblip.families import load_engine_class
from tests.helpers import run_cli

NEW = ["chinese_clip", "siglip"]
LABELS = ["猫", "狗", "汽车", "穿制服的女人"]


@pytest.fixture(scope="module", params=NEW)
def folder(request, tmp_path_factory):
    preset = families.family(request.param).presets[-1].name  # the tiny one
    out = tmp_path_factory.mktemp(request.param) / "model"
    export_model(f"random:{preset}", out, attentions=True)
    return request.param, out


def test_each_family_is_one_registry_entry_with_its_own_scoring_and_prompt():
    for name, scoring in [("clip", "softmax"), ("chinese_clip", "softmax"), ("siglip", "sigmoid")]:
        entry = families.family(name)
        assert entry.scoring == scoring and "{}" in entry.prompt_template
        assert [t.name for t in entry.tasks] == ["embed", "similarity", "classify"]
        assert load_engine_class(name).family == name
        assert families.by_model_type(entry.model_type) is entry
    assert families.family("chinese_clip").prompt_template == "一张{}的照片。"
    assert {"random:chinese-clip-base", "random:siglip-base"} <= set(families.preset_names())


def test_classify_says_how_it_scores(folder, photos, capsys):
    family, model = folder
    code, out, err = run_cli(capsys, "classify", model, *photos, "--labels", *LABELS, "--json")
    assert code == 0 and "RANDOM weights" in err
    document = json.loads(out)
    assert document["scoring"] == families.family(family).scoring
    assert document["template"] == families.family(family).prompt_template
    for result in document["results"]:
        total = sum(label["probability"] for label in result["labels"])
        assert {l["label"] for l in result["labels"]} == set(LABELS)
        if family == "siglip":
            assert all(0 < l["probability"] < 1 for l in result["labels"]) and abs(total - 1) > 1e-3
        else:
            assert total == pytest.approx(1, abs=1e-5)
    code, out, _ = run_cli(capsys, "classify", model, photos[0], "--labels", *LABELS)
    assert code == 0 and out.splitlines()[0].startswith("probability: ")
    assert ("sigmoid" if family == "siglip" else "softmax") in out.splitlines()[0]


def test_similarity_plot_with_chinese_labels_and_embed(folder, photos, tmp_path, capsys):
    _, model = folder
    plot = tmp_path / "sim.png"
    code, out, err = run_cli(capsys, "similarity", model, "--images", *photos, "--texts", *LABELS, "--plot", plot)
    assert code == 0 and "Glyph" not in err and Image.open(plot).size[0] > 200
    code, out, _ = run_cli(capsys, "embed", model, "--texts", "一只猫", "a cat", "--json")
    rows = [r["embedding"] for r in json.loads(out)["results"]]
    assert code == 0 and np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)


def test_index_and_search_with_a_chinese_query(folder, photos, tmp_path, capsys):
    _, model = folder
    album = tmp_path / "相册"
    album.mkdir()
    for photo in photos:
        (album / photo.name).write_bytes(photo.read_bytes())
    Image.new("RGB", (30, 20), (250, 10, 10)).save(album / "红色.png")
    db = tmp_path / "photos.db"
    code, _, err = run_cli(capsys, "index", model, album, "--db", db)
    assert code == 0, err
    code, out, _ = run_cli(capsys, "search", "--db", db, "--text", "一只猫", "-k", 3, "--json")
    hits = json.loads(out)["hits"]
    engine = load_engine_class(folder[0]).from_dir(model)
    paths = sorted(album.iterdir())
    expected = (engine.embed_images(paths) @ engine.embed_texts(["一只猫"])[0])
    assert code == 0 and [h["path"] for h in hits] == [str(paths[i]) for i in np.argsort(-expected)]


def test_attention_figures(folder, photos, tmp_path, capsys):
    _, model = folder
    out = tmp_path / "attention.png"
    code, _, err = run_cli(capsys, "viz", "attention", model, photos[0], "--text", "我 喜欢 小猫", "--out", out)
    assert code == 0, err
    assert Image.open(out).size[0] > 200 and Image.open(tmp_path / "attention-text.png").size[0] > 200


def test_served(folder, photos):
    pytest.importorskip("fastapi", reason="the `serve` extra is not installed")
    from tests.serve.test_server import Server, b64

    family, model = folder
    engine = load_engine_class(family).from_dir(model)
    server = Server([f"m={model}"])
    try:
        listed = server.post("/v1/embeddings", {"model": "m", "input": ["一只猫"], "encoding_format": "float"}).json()
        assert np.allclose(listed["data"][0]["embedding"], engine.embed_texts(["一只猫"])[0], atol=1e-5)
        answer = server.post("/v1/classify", {"model": "m", "images": [b64(photos[0])], "labels": LABELS}).json()
        assert answer["scoring"] == engine.scoring and answer["template"] == engine.prompt_template
        expected = dict(engine.classify([photos[0]], LABELS)[0])
        assert {r["label"]: pytest.approx(expected[r["label"]], abs=1e-5) for r in answer["results"][0]} == {
            label: pytest.approx(p, abs=1e-5) for label, p in expected.items()}
        similarity = server.post("/v1/similarity", {"model": "m", "images": [b64(photos[0])], "texts": LABELS}).json()
        assert np.allclose(similarity["similarity"], engine.similarity([photos[0]], LABELS), atol=1e-5)
        import httpx

        described = httpx.get(server.url + "/v1/models", timeout=30).json()["data"][0]
        assert described["scoring"] == engine.scoring and described["family"] == family
    finally:
        code, err = server.stop()
    assert code == 0, err[-2000:]


def test_int8_keeps_every_graph_int8_passes_verify_and_stays_close(folder, tmp_path, photos, capsys):
    family, model = folder
    manifest = export_model(f"random:{families.family(family).presets[-1].name}", tmp_path / "int8", precision="int8")
    assert {name: graph.precision for name, graph in manifest.graphs.items()} == {
        "image_tower": "int8", "text_tower": "int8"}
    code, out, _ = run_cli(capsys, "verify", tmp_path / "int8")
    assert code == 0 and out.count("pass") >= 2
    fp32, int8 = (load_engine_class(family).from_dir(path) for path in (model, tmp_path / "int8"))
    texts = ["一只猫", "a photo of a dog", ""]
    assert (np.sum(int8.embed_images(photos) * fp32.embed_images(photos), axis=1) > 0.99).all()
    text_rows = np.sum(int8.embed_texts(texts) * fp32.embed_texts(texts), axis=1)
    assert (text_rows > 0.99).all(), text_rows
