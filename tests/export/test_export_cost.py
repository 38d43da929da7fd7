"""What an export costs is measured and recorded; its lean paths write exactly what torch.onnx and onnx write."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime.quantization
import pytest
from onnx import numpy_helper

from clipblip import families
from clipblip.export import convert, optimize
from clipblip.export.meter import Meter
from clipblip.export.sources import load_source
from clipblip.export.trace import trace_graphs
from clipblip.manifest import Manifest

FINISH_STEPS = ("fusion", "parity", "check", "precision", "store")


def specs_of(ref, task=None, attentions=False):
    source = load_source(ref, task)
    return source, families.load_exporter(source.family).graph_specs(source, attentions)


def test_the_manifest_records_the_seconds_and_peak_memory_of_the_export_and_each_step(int8_folders):
    export = Manifest.load(int8_folders["blip"]).export
    steps = export["steps"]
    graphs = ("image_tower", "cross_kv", "decoder_step")
    assert {"load", *(f"{g}/{s}" for g in graphs for s in ("trace", "pytorch", *FINISH_STEPS))} <= set(steps)
    assert "image_tower/openvino" in steps or "image_tower" not in families.family("blip").openvino_graphs
    for name, step in steps.items():
        assert set(step) == {"seconds", "cpu_seconds", "peak_rss_mb"}, name
        assert step["seconds"] >= 0 and step["cpu_seconds"] >= 0, name
    assert export["seconds"] >= sum(step["seconds"] for step in steps.values()) - 0.05 * len(steps)
    assert export["seconds"] > steps["load"]["seconds"] > 0
    if not Path("/proc/self/statm").exists():
        pytest.skip("resident memory is sampled from /proc/self/statm, which this system lacks")
    peaks = [step["peak_rss_mb"] for step in steps.values()]
    assert all(isinstance(peak, int) and peak > 0 for peak in peaks)
    assert export["peak_rss_mb"] >= max(peaks)
    assert "/proc/self/statm" in export["measured"] and "getrusage" in export["measured"]
    assert json.loads((int8_folders["blip"] / "manifest.json").read_text())["export"] == export


def test_a_folder_whose_manifest_has_no_export_section_loads(int8_folders, tmp_path):
    folder = shutil.copytree(int8_folders["clip"], tmp_path / "old")
    data = json.loads((folder / "manifest.json").read_text())
    del data["export"]
    (folder / "manifest.json").write_text(json.dumps(data))
    assert Manifest.load(folder).export == {}


def test_nothing_but_the_folder_remains_of_the_work(int8_folders):
    for folder in int8_folders.values():
        assert not (folder / ".work").exists()
        assert not [p for p in folder.parent.iterdir() if ".partial-" in p.name]


def test_a_traced_graph_is_what_torch_onnx_writes_with_its_weights_inside(tmp_path):
    _, specs = specs_of("random:blip-tiny", "vqa", attentions=True)
    for spec in specs:
        lean, whole = tmp_path / f"{spec.name}.onnx", tmp_path / f"{spec.name}.whole.onnx"
        convert.export_graph(spec, lean, 17)
        convert._trace(spec, whole, 17, export_params=True)  # torch.onnx's own, every weight inside
        assert (tmp_path / f"{spec.name}.onnx.data").is_file() or spec.name == "itc_image"
        model = onnx.load(str(lean))  # the weights read back into the graph
        for tensor in model.graph.initializer:
            tensor.ClearField("data_location")  # onnx.load sets it to DEFAULT, which torch.onnx leaves unset
        assert model.SerializeToString() == whole.read_bytes(), spec.name


def test_store_graph_writes_the_files_onnx_save_model_writes(tmp_path):
    _, specs = specs_of("random:clip-tiny")
    whole = tmp_path / "whole.onnx"
    convert._trace(specs[1], whole, 17, export_params=True)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    onnx.save_model(onnx.load(str(whole)), str(tmp_path / "a" / "g.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="g.onnx.data", size_threshold=1024)
    sha256, data = convert.store_graph(whole, tmp_path / "b" / "g.onnx")
    convert.store_graph(tmp_path / "b" / "g.onnx", tmp_path / "c" / "g.onnx")  # from weights in a data file
    for name in ("g.onnx", "g.onnx.data"):
        want = (tmp_path / "a" / name).read_bytes()
        assert (tmp_path / "b" / name).read_bytes() == want == (tmp_path / "c" / name).read_bytes(), name
    assert list(data) == ["g.onnx.data"] and len(sha256) == 64


def test_dynamic_int8_reads_the_weights_from_the_data_file_and_writes_what_onnxruntime_writes(tmp_path):
    _, specs = specs_of("random:clip-tiny")
    image = specs[0]
    fp32, lean = tmp_path / image.filename, tmp_path / "image_tower.int8.onnx"
    convert.export_graph(image, fp32, 17)
    record = optimize.write_int8(fp32, lean, "u8s7")
    left = [t for t in onnx.load(str(lean), load_external_data=False).graph.initializer if t.external_data]
    # the patch embedding stays fp32 (a Conv): still in the fp32 graph's data file, not copied into the int8 graph
    assert [t.name for t in left] == ["vision_model.embeddings.patch_embedding.weight"]
    assert {e.value for t in left for e in t.external_data if e.key == "location"} == {"image_tower.onnx.data"}
    (tmp_path / "own").mkdir()
    whole, own = tmp_path / "own" / "whole.onnx", tmp_path / "own" / "int8.onnx"
    convert._trace(image, whole, 17, export_params=True)
    chosen = optimize.INT8_FORMATS["u8s7"]
    onnxruntime.quantization.quantize_dynamic(
        str(whole), str(own), weight_type=chosen["weight_type"], per_channel=True, reduce_range=True,
        nodes_to_exclude=record["kept_fp32"], extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    ours, theirs = onnx.load(str(lean)), onnx.load(str(own))
    assert [n.SerializeToString() for n in ours.graph.node] == [n.SerializeToString() for n in theirs.graph.node]
    assert [t.name for t in ours.graph.initializer] == [t.name for t in theirs.graph.initializer]
    for a, b in zip(ours.graph.initializer, theirs.graph.initializer):
        assert np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b)), a.name


def test_parity_measures_the_same_difference_a_slice_at_a_time(monkeypatch):
    rng = np.random.default_rng(0)
    value = rng.standard_normal((3, 5, 7)).astype(np.float32)
    reference = value + rng.standard_normal((3, 5, 7)).astype(np.float32) * 1e-3
    whole = float(np.max(np.abs(value.astype(np.float64) - reference.astype(np.float64))))
    monkeypatch.setattr(convert, "DIFF_CHUNK", 8)  # 105 elements: 14 slices, the last one short
    assert convert._max_abs_diff(value, reference) == whole


def test_tracing_lets_the_weights_go_and_keeps_pytorchs_answers_on_disk(tmp_path):
    source, specs = specs_of("random:clip-tiny")
    traced = trace_graphs(source.model, specs, tmp_path / "work", 17, Meter(), lambda message: None)
    assert all(p.numel() == 0 for p in source.model.parameters())
    assert not (tmp_path / "work" / "weights.pt").exists()
    for spec in specs:
        graph, reference = traced[spec.name].graph, traced[spec.name].reference
        assert graph.name == spec.filename and graph.with_name(graph.name + ".data").is_file()
        cases = list(reference.cases())
        assert [sizes for sizes, _, _ in cases] == list(spec.check_sizes)
        for sizes, feeds, answers in cases:
            assert list(feeds) == [t.name for t in spec.inputs]
            assert [a.shape[0] for a in answers] == [sizes["batch"]] * len(spec.outputs)


def peak_kib(command: list[str]) -> tuple[int, subprocess.CompletedProcess]:
    """Run ``command``; its peak resident memory (the kernel's high-water mark, KiB) and its outcome."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    return usage.ru_maxrss, subprocess.CompletedProcess(command, os.waitstatus_to_exitcode(status), output)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux (bytes on macOS)")
@pytest.mark.parametrize("args", [
    ("random:clip-base", "--precision", "int8"),
    ("random:chinese-clip-base", "--precision", "int8"),
    ("random:siglip-base", "--precision", "int8"),
    ("random:blip-base", "--task", "caption", "--precision", "int8", "--attentions"),
    ("random:blip-base", "--task", "vqa", "--precision", "int8", "--attentions"),
    ("random:blip-base", "--task", "itm", "--precision", "int8"),
], ids=lambda args: "-".join(a for a in args if not a.startswith("--")))
def test_a_base_export_peaks_under_2_5_gb(tmp_path, args):
    kib, run = peak_kib([sys.executable, "-m", "clipblip", "export", *args, "--out", str(tmp_path / "m")])
    assert run.returncode == 0, run.stdout[-2000:]
    recorded = Manifest.load(tmp_path / "m").export
    assert kib <= 2_500_000, f"{kib / 1e6:.2f} GB: {recorded['steps']}"
    assert recorded["peak_rss_mb"] <= kib / 1024 + 1  # the manifest's peak is the process's, not more
