"""A model folder checks itself where it runs: `clipblip verify`, and the engine's check at first load."""

import json
import shutil

import numpy as np
import onnx
import pytest

from clipblip.engine import BlipEngine, ClipEngine, checks
from clipblip.engine.machine import this_machine
from clipblip.errors import EXIT_CODES, AccuracyError, ModelLoadError
from clipblip.manifest import Manifest, sha256_of
from tests.helpers import run_cli


def copy_of(folder, tmp_path):
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def scramble_int8_weights(folder, graph):
    """Shuffle every 8-bit weight tensor of ``graph`` inside its external data file, then record the new hashes
    in the manifest, as someone who changed the weights on purpose would: the files are consistent, the
    answers are not."""
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["graphs"][graph]
    model = onnx.load(str(folder / entry["file"]), load_external_data=False)
    rng = np.random.default_rng(0)
    for tensor in model.graph.initializer:
        if tensor.data_type not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) or not tensor.external_data:
            continue
        place = {e.key: e.value for e in tensor.external_data}
        path, offset, length = folder / place["location"], int(place.get("offset", 0)), int(place["length"])
        data = bytearray(path.read_bytes())
        data[offset:offset + length] = rng.permutation(np.frombuffer(bytes(data[offset:offset + length]), np.uint8)).tobytes()
        path.write_bytes(bytes(data))
    entry["data"] = {name: sha256_of(folder / name) for name in entry["data"]}
    entry["sha256"] = sha256_of(folder / entry["file"])
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_int8_folders_verify_here_one_line_per_graph(int8_folders, capsys):
    machine = this_machine()
    for folder in int8_folders.values():
        manifest = Manifest.load(folder)
        assert all(graph.precision == "int8" for graph in manifest.graphs.values())  # every graph kept int8
        code, out, err = run_cli(capsys, "verify", folder)
        assert code == 0, err
        lines = out.strip().splitlines()
        assert [line.split()[0] for line in lines] == list(manifest.graphs)
        for line in lines:  # graph, precision, provider, CPU and its flags, measured agreement, gate, pass
            assert "  int8  CPUExecutionProvider  " in line and machine.cpu in line and line.endswith("pass")
            assert " ".join(machine.flags) in line and "least cosine to fp32" in line and "gate >=" in line
        code, out, _ = run_cli(capsys, "verify", folder, "--json")
        document = json.loads(out)
        assert code == 0 and document["passed"] and document["machine"]["flags"] == list(machine.flags)
        for result in document["results"]:
            graph = manifest.graphs[result["graph"]]
            assert result["passed"] and result["threshold"] == graph.check["cosine"]
            # what export measured on this machine is what verify measures: the same inputs, the same code
            assert result["measured"] == pytest.approx(graph.accuracy["measured"], abs=1e-6)
    teacher = json.loads(out)["results"][-1]["teacher_forced"]  # the BLIP decoder step's decode from [DEC]
    assert teacher["passed"] and teacher["steps"] == 16 and teacher["rows"] == 2


def test_changed_int8_weights_fail_verify_and_the_engine_refuses_them(int8_folders, tmp_path, capsys):
    folder = copy_of(int8_folders["clip"], tmp_path)
    scramble_int8_weights(folder, "image_tower")
    code, out, err = run_cli(capsys, "verify", folder)
    assert code == EXIT_CODES["AccuracyError"] == 18
    image, text = out.strip().splitlines()
    assert image.startswith("image_tower  int8") and image.endswith("FAIL")
    assert text.startswith("text_tower  int8") and text.endswith("pass")
    assert "image_tower fails on this machine" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(AccuracyError) as refused:
        ClipEngine.from_dir(folder)
    message = str(refused.value)
    assert "graph 'image_tower' (int8, CPUExecutionProvider)" in message and this_machine().cpu in message
    assert "least cosine to fp32" in message and "gate >= 0.999" in message and "clipblip verify" in message
    assert "\n" not in message
    # the refusal is recorded for this machine: the next load refuses at once, with the same numbers
    with pytest.raises(AccuracyError, match="image_tower"):
        ClipEngine.from_dir(folder)


def test_the_check_runs_once_per_folder_version_machine_and_runtime(int8_folders, tmp_path, monkeypatch):
    folder = copy_of(int8_folders["blip"], tmp_path)
    monkeypatch.setenv("CLIPBLIP_CACHE", str(tmp_path / "cache"))  # a user who never ran this folder
    runs = []
    real = checks.run_check
    monkeypatch.setattr(checks, "run_check", lambda session, data, gate, info: runs.append(info.file) or
                        real(session, data, gate, info))
    BlipEngine.from_dir(folder)
    assert sorted(runs) == sorted(g.file for g in Manifest.load(folder).graphs.values())  # first load: every graph
    runs.clear()
    BlipEngine.from_dir(folder)
    assert runs == []  # recorded: nothing is run again
    real_runtime = checks.runtime_of
    monkeypatch.setattr(checks, "runtime_of", lambda s: {**real_runtime(s), "runtime": "onnxruntime 0.0-other"})
    BlipEngine.from_dir(folder)
    assert len(runs) == 3  # another runtime version: checked again
    runs.clear()
    scramble_int8_weights(folder, "cross_kv")  # another folder version: its changed graph is checked again
    with pytest.raises(AccuracyError, match="cross_kv"):
        BlipEngine.from_dir(folder)
    assert runs == ["cross_kv.int8.onnx"]
    runs.clear()
    with pytest.raises(AccuracyError, match="cross_kv"):  # the failure is recorded too: refused at once
        BlipEngine.from_dir(folder)
    assert runs == []
    monkeypatch.setenv("CLIPBLIP_CACHE", str(tmp_path / "elsewhere"))  # no record (or an unwritable cache):
    BlipEngine.from_dir(int8_folders["blip"])  # every load checks again, and loads
    assert len(runs) == 3


def test_an_fp32_folder_is_checked_value_for_value(tiny_clip, capsys):
    code, out, _ = run_cli(capsys, "verify", tiny_clip.exported, "--json")
    assert code == 0
    for result in json.loads(out)["results"]:
        assert result["metric"] == "max |difference| to fp32" and result["precision"] == "fp32"
        assert result["threshold"] == {name: 1e-4 for name in result["threshold"]}
        assert all(0 <= value <= 1e-5 for value in result["measured"].values())  # the same kernels: ~exact


def test_a_missing_or_damaged_check_is_refused(int8_folders, tmp_path, monkeypatch, capsys):
    folder = copy_of(int8_folders["clip"], tmp_path)
    monkeypatch.setenv("CLIPBLIP_CACHE", str(tmp_path / "cache"))  # nothing recorded: the check must run
    check = folder / "text_tower.checks.npz"
    check.write_bytes(check.read_bytes()[:-10])
    with pytest.raises(ModelLoadError, match="text_tower.checks.npz: sha256 differs"):
        ClipEngine.from_dir(folder)
    code, out, err = run_cli(capsys, "verify", folder)
    assert code == 18 and "text_tower fails" in err
    assert out.splitlines()[1].startswith("text_tower  int8  auto") and "sha256 differs" in out.splitlines()[1]
    check.unlink()
    with pytest.raises(ModelLoadError, match="text_tower.*check file is missing"):
        ClipEngine.from_dir(folder)


def test_a_folder_of_the_previous_format_is_refused_but_replaceable(int8_folders, tmp_path):
    from clipblip.files import is_model_folder

    folder = copy_of(int8_folders["clip"], tmp_path)
    data = json.loads((folder / "manifest.json").read_text())
    data["format_version"] = 1
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="format version 1 is not supported.*re-export"):
        ClipEngine.from_dir(folder)
    assert is_model_folder(folder)  # an earlier clipblip's export: `export --force` may replace it
