import pytest

from clipblip.engine import BlipEngine, ClipEngine
from clipblip.export import clip as clip_export
from clipblip.export import export_model
from clipblip.manifest import Manifest
from tests.conftest import varied_images


@pytest.fixture(scope="module")
def clip_int8(tiny_clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "clip"
    export_model(str(tiny_clip.checkpoint), out, precision="int8")
    return out


def test_int8_graphs_pass_their_gate_and_stay_close_to_fp32(tiny_clip, clip_int8, photos):
    manifest = Manifest.load(clip_int8)
    assert manifest.source["precision"] == "int8"
    for name, graph in manifest.graphs.items():
        gate = graph.accuracy
        assert gate["precision_tried"] == "int8" and gate["finite"]
        if gate["passed"]:
            assert graph.precision == "int8" and graph.file == f"{name}.int8.onnx"
            assert min(gate["least"].values()) >= 0.999
        else:  # kept in fp32, and the manifest says how close int8 came
            assert graph.precision == "fp32" and graph.file == f"{name}.onnx"
        assert (clip_int8 / graph.file).is_file()
    assert any(g.precision == "int8" for g in manifest.graphs.values())
    fp32, int8 = ClipEngine.from_dir(tiny_clip.exported), ClipEngine.from_dir(clip_int8)
    images = varied_images(photos)
    cosine = (fp32.embed_images(images) * int8.embed_images(images)).sum(1)
    assert cosine.min() >= 0.995  # real photos, not just the gate's random inputs


def test_a_graph_that_fails_its_gate_stays_fp32(monkeypatch, tmp_path):
    real_specs = clip_export.graph_specs

    def strict(source, attentions=False):
        from dataclasses import replace
        return [replace(s, gate={k: 1.0 + 1e-9 for k in s.gate}) for s in real_specs(source, attentions)]

    monkeypatch.setattr(clip_export, "graph_specs", strict)
    manifest = export_model("random:clip-tiny", tmp_path / "m", precision="int8")
    for name, graph in manifest.graphs.items():
        assert graph.precision == "fp32" and not graph.accuracy["passed"]
        assert sorted(p.name for p in (tmp_path / "m").glob(f"{name}*")) == [f"{name}.onnx"]


def test_fp16_export_runs_and_is_finite(tmp_path, photos):
    manifest = export_model("random:blip-tiny", tmp_path / "m", task="caption", precision="fp16")
    assert all(g.precision == "fp16" and g.accuracy["finite"] for g in manifest.graphs.values())
    assert manifest.graphs["decoder_step"].accuracy["least"]["logits"] >= 0.99
    fp16 = BlipEngine.from_dir(tmp_path / "m").generate_captions(photos, max_new_tokens=5)
    assert all(len(g.token_ids) == 5 or g.token_ids[-1] == 102 for g in fp16)


def test_fusion_is_recorded_and_can_be_turned_off(tmp_path):
    fused = export_model("random:clip-tiny", tmp_path / "a")
    image = fused.graphs["image_tower"].optimization
    assert image["applied"] and image["fused"]["Attention"] == 2 and image["parity"]["max_abs_diff"] <= 1e-4
    plain = export_model("random:clip-tiny", tmp_path / "b", optimize=False)
    assert all(not g.optimization["applied"] for g in plain.graphs.values())


def test_blip_int8_decoder_keeps_the_logits_gate(tmp_path, photos):
    manifest = export_model("random:blip-tiny", tmp_path / "m", task="caption", precision="int8")
    step = manifest.graphs["decoder_step"]
    assert step.accuracy["least"]["logits"] >= 0.99 if step.accuracy["passed"] else step.precision == "fp32"
    captions = BlipEngine.from_dir(tmp_path / "m").caption(photos, max_new_tokens=4)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
