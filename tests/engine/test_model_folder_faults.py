"""Damaged, hostile or incompatible model folders fail at load, naming the file at fault."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from clipblip.engine import ClipEngine
from clipblip.errors import CompatibilityError, ModelLoadError, UnsafeArtifactError
from clipblip.manifest import external_data_paths, sha256_of


@pytest.fixture
def folder(tiny_clip, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_clip.exported, copy)
    return copy


def edit_manifest(folder, change):
    data = json.loads((folder / "manifest.json").read_text())
    change(data)
    (folder / "manifest.json").write_text(json.dumps(data))


def rehash(folder, graph="image_tower"):
    """Record the graph's and its external weights' hashes in the manifest, as export does."""
    def change(data):
        path = folder / data["graphs"][graph]["file"]
        data["graphs"][graph]["sha256"] = sha256_of(path)
        inside = [name for name in external_data_paths(path)
                  if (folder / name).resolve().is_relative_to(folder.resolve()) and (folder / name).is_file()]
        data["graphs"][graph]["data"] = {name: sha256_of(folder / name) for name in inside}
    edit_manifest(folder, change)


def graph_file(folder, graph="image_tower"):
    return folder / json.loads((folder / "manifest.json").read_text())["graphs"][graph]["file"]


def test_missing_graph(folder):
    graph_file(folder).unlink()
    with pytest.raises(ModelLoadError, match="image_tower.*missing"):
        ClipEngine.from_dir(folder)


def test_truncated_graph_fails_its_hash_and_onnx_runtime(folder):
    path = graph_file(folder)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="sha256"):
        ClipEngine.from_dir(folder)
    with pytest.raises(ModelLoadError, match="cannot load graph 'image_tower'"):
        ClipEngine.from_dir(folder, verify=False)


def test_replaced_graph_fails_its_hash(folder):
    path = graph_file(folder)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=f"{path.name}: sha256 differs"):
        ClipEngine.from_dir(folder)


def test_missing_tokenizer(folder):
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        ClipEngine.from_dir(folder)


def test_outputs_that_disagree_with_the_manifest(folder):
    edit_manifest(folder, lambda d: d["graphs"]["text_tower"]["outputs"][0].update(name="embeddings"))
    with pytest.raises(ModelLoadError, match=r"outputs \['text_embeds'\].*manifest says.*\['embeddings'\]"):
        ClipEngine.from_dir(folder)


def save_with_external_data(folder, location_after):
    """Move the image tower's weights to external data, then point them at ``location_after``."""
    path = graph_file(folder)
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    if location_after != "weights.bin":
        model = onnx.load(str(path), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location_after
        onnx.save_model(model, str(path))
    rehash(folder)


def test_external_data_inside_the_folder_loads(folder, tiny_clip, photos):
    save_with_external_data(folder, "weights.bin")
    moved = ClipEngine.from_dir(folder).embed_images(photos)
    np.testing.assert_allclose(moved, ClipEngine.from_dir(tiny_clip.exported).embed_images(photos), atol=1e-6)


def test_exported_weights_live_outside_the_graph_and_are_hashed(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    for graph in manifest["graphs"].values():
        assert list(graph["data"]) == [graph["file"] + ".data"]  # mapped from disk by ONNX Runtime
    data = folder / manifest["graphs"]["image_tower"]["data"].popitem()[0]
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    data.write_bytes(bytes(damaged))
    with pytest.raises(ModelLoadError, match=f"{data.name}: sha256 differs"):
        ClipEngine.from_dir(folder)


def test_external_data_the_manifest_does_not_list_is_refused(folder):
    save_with_external_data(folder, "weights.bin")
    edit_manifest(folder, lambda d: d["graphs"]["image_tower"].update(data={}))
    with pytest.raises(ModelLoadError, match="names external data 'weights.bin', which the manifest does not list"):
        ClipEngine.from_dir(folder)


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/passwd", "sub/../../weights.bin"])
def test_external_data_leaving_the_folder_is_refused(folder, location):
    save_with_external_data(folder, "weights.bin")
    shutil.copy(folder / "weights.bin", folder.parent / "weights.bin")
    save_with_external_data(folder, location)
    with pytest.raises(UnsafeArtifactError, match="outside the model folder"):
        ClipEngine.from_dir(folder)


def test_external_data_symlink_leaving_the_folder_is_refused(folder):
    save_with_external_data(folder, "weights.bin")
    outside = folder.parent / "elsewhere.bin"
    (folder / "weights.bin").rename(outside)
    os.symlink(outside, folder / "weights.bin")
    with pytest.raises(UnsafeArtifactError, match="link that leaves the model folder"):
        ClipEngine.from_dir(folder)


def test_graph_path_in_the_manifest_must_stay_inside(folder):
    edit_manifest(folder, lambda d: d["graphs"]["image_tower"].update(file="../image_tower.onnx"))
    with pytest.raises(UnsafeArtifactError, match="outside the model folder"):
        ClipEngine.from_dir(folder)


def test_newer_ir_version_is_a_compatibility_error(folder):
    path = graph_file(folder)
    model = onnx.load(str(path))
    model.ir_version = 99
    onnx.save(model, str(path))
    rehash(folder)
    with pytest.raises(CompatibilityError, match=r"newer ONNX Runtime.*onnxruntime \d"):
        ClipEngine.from_dir(folder, provider="cpu")  # ONNX Runtime's refusal (OpenVINO's reader may take it)


def test_newer_opset_is_a_compatibility_error(folder):
    path = graph_file(folder)
    model = onnx.load(str(path))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 99
    onnx.save(model, str(path))
    rehash(folder)
    with pytest.raises(CompatibilityError, match="newer ONNX Runtime"):
        ClipEngine.from_dir(folder, provider="cpu")


def test_a_verified_graph_is_not_hashed_again_until_it_changes(folder, monkeypatch):
    import clipblip.manifest as manifest

    ClipEngine.from_dir(folder)  # hashes and records each graph
    hashed = []
    real = manifest.sha256_of
    monkeypatch.setattr(manifest, "sha256_of", lambda path, *a: hashed.append(Path(path).name) or real(path, *a))
    ClipEngine.from_dir(folder)
    assert hashed == []
    path = graph_file(folder)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, new modification time
    with pytest.raises(ModelLoadError, match=f"{path.name}: sha256 differs"):
        ClipEngine.from_dir(folder)
    assert hashed == [path.name]
