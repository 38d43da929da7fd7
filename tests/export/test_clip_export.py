import json

import onnx
import pytest
import torch

from clipblip.errors import ModelSourceError, OutputError, OutputExistsError, ParityError
from clipblip.export import clip as clip_export
from clipblip.export import export_model
from clipblip.manifest import Manifest, sha256_of
from tests.helpers import pickled_copy


def test_folder_holds_manifest_graphs_and_tokenizer(tiny_clip):
    manifest = Manifest.load(tiny_clip.exported)
    names = sorted(p.name for p in tiny_clip.exported.iterdir())
    assert names == ["image_tower.checks.npz", "image_tower.onnx", "image_tower.onnx.data", "manifest.json",
                     "text_tower.checks.npz", "text_tower.onnx", "text_tower.onnx.data", "tokenizer.json"]
    # weights beside each graph, mapped from disk; each graph's check (its gate's inputs and fp32 outputs)
    assert manifest.family == "clip" and not manifest.random_weights
    assert manifest.source["model"] == str(tiny_clip.checkpoint)
    for name, graph in manifest.graphs.items():
        assert graph.sha256 == sha256_of(tiny_clip.exported / graph.file)
        assert graph.check["file"] == f"{name}.checks.npz"
        assert graph.check["sha256"] == sha256_of(tiny_clip.exported / graph.check["file"])
        assert graph.check["max_abs_diff"] == 1e-4 and graph.check["cosine"]
        assert 0 <= graph.parity["max_abs_diff"] <= 1e-4
        assert {"batch": 1} in [{k: v for k, v in s.items() if k == "batch"} for s in graph.parity["checked_sizes"]]
    image, text = manifest.graphs["image_tower"], manifest.graphs["text_tower"]
    assert image.inputs[0].shape[0] == "batch" and image.outputs[0].name == "image_embeds"
    assert [t.name for t in text.inputs] == ["input_ids", "attention_mask"]
    assert text.inputs[0].shape == ["batch", "sequence"]
    assert manifest.model["embed_dim"] == tiny_clip.model.config.projection_dim
    assert manifest.model["logit_scale"] == pytest.approx(tiny_clip.model.logit_scale.exp().item())
    assert manifest.tokenizer["max_length"] == 77
    json.loads((tiny_clip.exported / "tokenizer.json").read_text())


def test_refuses_to_overwrite_without_force(tmp_path):  # about the folder, not the model: one tiny preset
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--force"):
        export_model("random:clip-tiny", out)
    with pytest.raises(OutputError, match="never replaced, even with --force"):  # not a folder clipblip wrote
        export_model("random:clip-tiny", out, force=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    export_model("random:clip-tiny", out, force=True)  # an empty folder holds nothing of the user's...
    first = (out / "manifest.json").stat().st_mtime_ns
    export_model("random:clip-tiny", out, force=True)  # ...and clipblip's own export is replaced
    assert (out / "manifest.json").stat().st_mtime_ns >= first and (out / "image_tower.onnx").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folders left behind


class BatchTwoOnly(torch.nn.Module):
    """A tracing trap: Python control flow on the batch size is frozen at the traced value."""

    def __init__(self, tower):
        super().__init__()
        self.tower = tower

    def forward(self, pixel_values):
        out = self.tower(pixel_values)
        return out if pixel_values.shape[0] == 2 else out + 0.01


def test_parity_gate_rejects_a_wrong_graph_and_writes_nothing(monkeypatch, tmp_path):
    real_specs = clip_export.graph_specs

    def trapped_specs(source, attentions=False):
        specs = real_specs(source, attentions)
        from dataclasses import replace
        return [replace(specs[0], module=BatchTwoOnly(specs[0].module))] + specs[1:]

    monkeypatch.setattr(clip_export, "graph_specs", trapped_specs)
    with pytest.raises(ParityError, match=r"graph 'image_tower': output 'image_embeds' differs .* by 0\.01"):
        export_model("random:clip-tiny", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_fused_graph_that_fails_parity_is_dropped_and_the_traced_graph_checked_and_kept(monkeypatch, tmp_path):
    from clipblip.export import optimize

    def failing(spec, path, reference):
        assert path.name.endswith(".fused.onnx")
        raise ParityError(f"graph '{spec.name}': made to fail")

    monkeypatch.setattr(optimize, "check_parity", failing)
    graphs = export_model("random:clip-tiny", tmp_path / "out").graphs
    for name, graph in graphs.items():
        assert graph.optimization["applied"] is False, name
        assert graph.optimization["reason"] == f"fused graph failed parity: graph '{name}': made to fail"
        assert 0 <= graph.parity["max_abs_diff"] <= 1e-4 and graph.parity["checked_sizes"], name
        nodes = onnx.load(str(tmp_path / "out" / graph.file), load_external_data=False).graph.node
        assert not [node.op_type for node in nodes if node.domain == "com.microsoft"], name  # ORT's fused ops
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_uncached_hub_id_offline_says_what_to_pass(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="save_pretrained.*random:clip-base"):
        export_model("nobody-here/no-such-clip", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_pickle_only_checkpoint_is_refused(tiny_clip, tmp_path):
    folder = pickled_copy(tiny_clip.checkpoint, tmp_path / "pickled")
    with pytest.raises(ModelSourceError, match="safetensors"):
        export_model(str(folder), tmp_path / "out")


def test_unknown_preset_lists_the_presets(tmp_path):
    with pytest.raises(ModelSourceError, match="random:clip-tiny"):
        export_model("random:clip-huge", tmp_path / "out")
