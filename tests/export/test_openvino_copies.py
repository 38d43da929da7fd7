"""OpenVINO copies of dual-encoder towers: fp32 (OpenVINO runs the folder's own fp32 graph, gated value for value),
bf16 (`--precision bf16`, gated like fp16, run only where the CPU computes bf16) and int8 (NNCF's calibrated static
int8, `--calibration DIR`); each gated at export, checked where it runs, and chosen by `auto` by CPU class."""

import json
import locale
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("openvino", reason="OpenVINO (the openvino extra) is not installed")

from clipblip.engine import ClipEngine  # noqa: E402
from clipblip.engine import openvino as backend  # noqa: E402
from clipblip.engine.machine import Machine  # noqa: E402
from clipblip.errors import ProviderError, UsageError  # noqa: E402
from clipblip.export import export_model  # noqa: E402
from clipblip.manifest import Manifest  # noqa: E402
from tests.engine.test_cross_cpu import ON_AVX2, ROOT, needs_qemu  # noqa: E402
from tests.helpers import run_cli  # noqa: E402

TEXTS = ["a photo of a cat", "a blue box of pencils", "a woman in uniform", "a dog on a beach at night"]
AVX2 = Machine("test", "x86_64", ("avx2",), "cpuid")
VNNI = Machine("test", "x86_64", ("avx2", "avx512bw", "avx512_vnni", "avx512_bf16"), "cpuid")
needs_bf16 = pytest.mark.skipif(not backend.available() or backend.inference_precision() != "bf16",
                                reason="this CPU does not compute bf16 (OpenVINO reports no AMX or AVX-512 BF16)")


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def folders(tiny_clip, tmp_path_factory):
    """The tiny CLIP's fp32 (the session's) and bf16 folders."""
    root = tmp_path_factory.mktemp("openvino-copies")
    export_model(str(tiny_clip.checkpoint), root / "bf16", precision="bf16")
    return {"fp32": tiny_clip.exported, "bf16": root / "bf16"}


@pytest.fixture(scope="module")
def calibrated(tiny_clip, photos, tmp_path_factory):
    """The tiny CLIP in int8, calibrated on a folder of photo crops, noise and texts (NNCF: slow tests only)."""
    root = tmp_path_factory.mktemp("openvino-int8")
    calibration = root / "calibration"
    calibration.mkdir()
    for i in range(8):
        with Image.open(photos[i % 2]) as photo:
            width, height = photo.size
            photo.convert("RGB").crop((i * width // 16, 0, width - i * width // 32, height)).save(
                calibration / f"crop{i}.png")
    rng = np.random.default_rng(0)  # and noise: the stored check a tiny model's copy is gated on is noise
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(calibration / f"noise{i}.png")
    (calibration / "texts.txt").write_text("\n".join(TEXTS * 2) + "\n", encoding="utf-8")
    export_model(str(tiny_clip.checkpoint), root / "int8", precision="int8", calibration=calibration)
    return root / "int8"


@pytest.mark.parametrize("tiny_clip", ["crop48"], indirect=True)
def test_fp32_folders_let_openvino_run_their_own_graphs_value_for_value(tiny_clip, photos, capsys):
    manifest = Manifest.load(tiny_clip.exported)
    for name in ("image_tower", "text_tower"):
        graph = manifest.graphs[name]
        entry = graph.backends["openvino"]
        assert entry["reads_graph"] and "files" not in entry  # the graph's own file and hashes
        assert (entry["weights"], entry["inference"], entry["auto_on"]) == ("fp32", "f32", [])
        assert "checked where it runs" in entry["accuracy"]["reason"]  # the graph passed parity; OpenVINO's run of it
        # is checked with fp32's gate where the folder opens (below)
    assert not list(tiny_clip.exported.glob("*.xml"))  # no second copy of the weights on disk
    encoding = locale.getpreferredencoding(False)
    ov = ClipEngine.from_dir(tiny_clip.exported, provider="openvino", threads=2)
    assert locale.getpreferredencoding(False) == encoding  # two graphs compiled: the process's locale kept
    ort = ClipEngine.from_dir(tiny_clip.exported, provider="cpu", threads=2)
    assert ov.providers == ["OpenVINO CPU (f32)"]
    assert np.abs(ov.embed_images(photos) - ort.embed_images(photos)).max() <= 1e-5
    assert np.abs(ov.embed_texts(TEXTS) - ort.embed_texts(TEXTS)).max() <= 1e-5
    code, out, _ = run_cli(capsys, "verify", tiny_clip.exported, "--provider", "openvino", "--json")
    assert code == 0
    for result in json.loads(out)["results"]:
        assert result["precision"] == "fp32" and result["metric"] == "max |difference| to fp32", result
        assert result["provider"] == "OpenVINO CPU (f32)"


@pytest.mark.parametrize("tiny_clip", ["crop48"], indirect=True)
def test_auto_never_runs_an_fp32_plan(tiny_clip, monkeypatch):
    """Only --provider openvino runs it: under auto its memory grew with varied input shapes (the soak test)."""
    from clipblip.engine import session

    for machine, chosen in ((AVX2, False), (VNNI, False)):
        monkeypatch.setattr(session, "this_machine", lambda: machine)
        tower = ClipEngine.from_dir(tiny_clip.exported).sessions["image_tower"]
        assert isinstance(tower, backend.OpenVinoGraph) == chosen, machine.flags


@pytest.mark.parametrize("tiny_clip", ["crop48"], indirect=True)
def test_bf16_folders_hold_fp32_graphs_and_a_bf16_plan(folders):
    manifest = Manifest.load(folders["bf16"])
    assert manifest.source["precision"] == "bf16"
    for name in ("image_tower", "text_tower"):
        graph = manifest.graphs[name]
        assert graph.precision == "fp32" and graph.file == f"{name}.onnx"  # ONNX Runtime's fallback: fp32 answers
        entry = graph.backends["openvino"]
        assert (entry["inference"], entry["auto_on"]) == ("bf16", ["bf16"])
        if backend.inference_precision() == "bf16":  # gated here, like fp16
            assert entry["accuracy"]["passed"] and min(entry["accuracy"]["measured"].values()) >= 0.999
        else:  # the plan is written all the same, for the machines that compute bf16 (checked there)
            assert entry["reads_graph"] and "checked where it runs" in entry["accuracy"]["reason"]


@needs_bf16
@pytest.mark.parametrize("tiny_clip", ["crop48"], indirect=True)
def test_bf16_runs_where_the_cpu_computes_it_and_fp32_elsewhere(folders, photos, monkeypatch):
    from clipblip.engine import session

    fp32 = ClipEngine.from_dir(folders["fp32"], provider="cpu", threads=2)
    engine = ClipEngine.from_dir(folders["bf16"], threads=2)
    assert engine.providers == ["OpenVINO CPU (bf16)"]
    assert cosines(engine.embed_images(photos), fp32.embed_images(photos)).min() >= 0.999
    assert cosines(engine.embed_texts(TEXTS), fp32.embed_texts(TEXTS)).min() >= 0.999
    monkeypatch.setattr(session.openvino, "inference_precision", lambda: "f32")  # a CPU without bf16
    monkeypatch.setattr(backend, "inference_precision", lambda: "f32")
    elsewhere = ClipEngine.from_dir(folders["bf16"], threads=2)
    assert elsewhere.providers == ["CPUExecutionProvider"]
    assert np.abs(elsewhere.embed_images(photos) - fp32.embed_images(photos)).max() <= 1e-6  # fp32's answers
    with pytest.raises(ProviderError, match="does not compute bf16") as e:
        ClipEngine.from_dir(folders["bf16"], provider="openvino")
    assert "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("tiny_clip", ["crop48"], indirect=True)
def test_int8_copies_are_calibrated_static_int8_and_kept_only_past_their_gate(calibrated, capsys):
    """A tiny random tower's static int8 misses the 0.999 gate here (seen: image 0.989, text 0.63 on their stored
    noise checks after calibration on photo crops, noise and 6 texts): kept or refused, the manifest, the files and
    the engine agree, and the folder answers with ONNX Runtime's dynamic int8."""
    manifest = Manifest.load(calibrated)
    kept = []
    for name in ("image_tower", "text_tower"):
        entry = manifest.graphs[name].backends["openvino"]
        assert entry["calibration"] == {"source": "--calibration", "images": 16, "texts": 8}
        record = entry["accuracy"]
        if record["passed"]:
            kept.append(name)
            assert min(record["measured"].values()) >= 0.999 and record["held_out"]["passed"]
            assert record["held_out"]["inputs"] == {"image_tower": 4, "text_tower": 2}[name]
            assert (entry["weights"], entry["inference"], entry["auto_on"]) == ("int8", "f32", ["vnni"])
            assert set(entry["files"]) == {f"{name}.openvino.xml", f"{name}.openvino.bin"}
        else:
            assert "files" not in entry and "gate" in entry["reason"] + str(record.get("reason"))
            assert not (calibrated / f"{name}.openvino.xml").exists()
        assert manifest.graphs[name].precision == "int8"  # ONNX Runtime's dynamic int8 is there either way
    if kept:
        ov = ClipEngine.from_dir(calibrated, provider="openvino", threads=2)
        assert [n for n in ("image_tower", "text_tower") if isinstance(ov.sessions[n], backend.OpenVinoGraph)] == kept
        code, out, _ = run_cli(capsys, "verify", calibrated, "--provider", "openvino", "--json")
        assert code == 0
    else:
        with pytest.raises(ProviderError, match="holds no graph for OpenVINO"):
            ClipEngine.from_dir(calibrated, provider="openvino")
    code, _, _ = run_cli(capsys, "verify", calibrated)
    assert code == 0


def test_int8_without_calibration_keeps_onnx_runtimes_dynamic_int8_alone(int8_folders):
    for graph in Manifest.load(int8_folders["clip"]).graphs.values():
        assert graph.precision == "int8" and "no --calibration" in graph.backends["openvino"]["reason"]


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp32", "--calibration", "{cal}"], "only int8 exports are calibrated"),
    (["--precision", "int8", "--calibration", "{missing}"], "not a folder"),
    (["--precision", "int8", "--calibration", "{empty}"], "holds no image and no .txt file"),
])
def test_bad_calibration_is_refused_in_one_line_before_anything_is_written(argv, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "cal").mkdir()
    argv = [a.format(cal=tmp_path / "cal", missing=tmp_path / "missing", empty=tmp_path / "empty") for a in argv]
    code, _, err = run_cli(capsys, "export", "random:clip-tiny", "--out", str(tmp_path / "out"), *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match=message):
        export_model("random:clip-tiny", tmp_path / "out", **{"precision": argv[1], "calibration": argv[3]})


def test_calibration_is_refused_for_a_family_without_a_calibrated_copy(tmp_path, capsys):
    (tmp_path / "cal").mkdir()
    (tmp_path / "cal" / "texts.txt").write_text("a photo of a cat\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "export", "random:blip-tiny", "--task", "caption", "--precision", "int8",
                           "--calibration", str(tmp_path / "cal"), "--out", str(tmp_path / "out"))
    assert code == 2 and "BLIP folders have no calibrated int8 copy" in err and not (tmp_path / "out").exists()


VERIFY = """
import json, sys
from clipblip.engine.checks import verify_folder
from clipblip.engine.machine import this_machine
print(json.dumps({"machine": this_machine().to_dict(),
                  "verify": {p: verify_folder(f, provider=p) for p, f in json.loads(sys.argv[1]).items()}}))
"""


@pytest.mark.slow
@needs_qemu
@pytest.mark.parametrize("tiny_clip", ["crop48"], indirect=True)
def test_copies_verify_on_avx2_kernels(folders, calibrated):
    """OpenVINO's f32 kernels on AVX2 give fp32's answers value for value; a bf16 folder there runs ONNX Runtime's fp32
    graphs; the int8 folder's graphs pass (qemu's Haswell)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    plan = json.dumps({"openvino": str(folders["fp32"]), "auto": str(folders["bf16"]), "cpu": str(calibrated)})
    done = subprocess.run([str(ON_AVX2), sys.executable, "-c", VERIFY, plan], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["machine"]["int8_kernels"] == "avx2"
    for provider, records in result["verify"].items():
        assert records and all(r["passed"] for r in records), (provider, records)
    assert {r["provider"] for r in result["verify"]["openvino"]} == {"OpenVINO CPU (f32)"}  # fp32, value for value
    assert {r["provider"] for r in result["verify"]["auto"]} == {"CPUExecutionProvider"}  # no bf16 on Haswell


@pytest.mark.slow  # 2,000 calls, as the fp32 soak in tests/engine/test_runtime_faults.py
@needs_bf16
@pytest.mark.parametrize("tiny_clip", ["crop48"], indirect=True)
def test_bf16_plan_memory_levels_off_under_a_soak(folders, photos):
    """auto runs the bf16 plan on OpenVINO; OpenVINO keeps compiled kernels per input shape, so varied shapes are
    what this soak feeds (it is why auto does not run the fp32 plan)."""
    from tests.engine.test_runtime_faults import GROWTH_LIMIT_MB, SOAK_CALLS, soak
    from tests.helpers import varied_images

    engine = ClipEngine.from_dir(folders["bf16"])
    assert engine.providers == ["OpenVINO CPU (bf16)"]
    assert soak(engine, varied_images(photos), SOAK_CALLS) < GROWTH_LIMIT_MB
