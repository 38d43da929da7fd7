"""OpenVINO as a second CPU backend: the export writes a gated copy of the BLIP image tower, and
``provider="openvino"`` (or "auto" on a CPU with AMX) runs it there, ONNX Runtime running the rest."""

import json

import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO (the openvino extra) is not installed")

from clipblip.engine import BlipEngine  # noqa: E402
from clipblip.engine import openvino as backend  # noqa: E402
from clipblip.errors import MissingExtraError, ModelLoadError, ProviderError  # noqa: E402
from clipblip.manifest import Manifest  # noqa: E402


@pytest.fixture(scope="module")
def int8_caption(blip_caption, tmp_path_factory):
    from clipblip.export import export_model

    folder = tmp_path_factory.mktemp("openvino") / "caption-int8"
    export_model(str(blip_caption.checkpoint), folder, precision="int8")
    return folder


def test_export_writes_a_gated_openvino_copy_of_the_image_tower(int8_caption):
    manifest = json.loads((int8_caption / "manifest.json").read_text())
    entry = manifest["graphs"]["image_tower"]["backends"]["openvino"]
    assert entry["accuracy"]["passed"] and entry["accuracy"]["measured"]["image_embeds"] >= 0.999
    assert set(entry["files"]) == {"image_tower.openvino.xml", "image_tower.openvino.bin"}
    assert all((int8_caption / name).stat().st_size > 0 for name in entry["files"])
    # only the graph OpenVINO measured faster on gets a copy
    assert not manifest["graphs"]["decoder_step"].get("backends")


def test_openvino_runs_the_image_tower_and_onnx_runtime_the_rest(int8_caption, photos):
    ov = BlipEngine.from_dir(int8_caption, provider="openvino", threads=2)
    ort = BlipEngine.from_dir(int8_caption, provider="cpu", threads=2)
    assert isinstance(ov.sessions["image_tower"], backend.OpenVinoGraph)
    assert ov.providers[0].startswith("OpenVINO CPU (")
    assert ov.sessions["decoder_step"].get_providers() == ["CPUExecutionProvider"]
    a, b = ov.image_embeds(photos), ort.image_embeds(photos)  # (images, tokens, width)
    a, b = a.reshape(len(photos), -1), b.reshape(len(photos), -1)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.999
    assert all(isinstance(c, str) for c in ov.caption(photos, max_new_tokens=5))


def test_auto_chooses_openvino_only_on_the_cpu_classes_the_folder_names(int8_caption, monkeypatch):
    from clipblip.engine import session
    from clipblip.engine.machine import Machine

    assert Manifest.load(int8_caption).graphs["image_tower"].backends["openvino"]["auto_on"] == ["amx"]
    for flags, chosen in ((("avx2",), False), (("avx2", "avx512bw", "avx512_vnni", "avx512_bf16"), False),
                          (("avx2", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"), True)):
        monkeypatch.setattr(session, "this_machine", lambda: Machine("test", "x86_64", flags, "cpuid"))
        tower = BlipEngine.from_dir(int8_caption).sessions["image_tower"]
        assert isinstance(tower, backend.OpenVinoGraph) == chosen, flags


def test_a_folder_without_an_openvino_copy_is_refused_in_one_line(int8_folders):
    from clipblip.engine import ClipEngine

    with pytest.raises(ProviderError, match="holds no graph for OpenVINO") as e:
        ClipEngine.from_dir(int8_folders["clip"], provider="openvino")  # int8 without --calibration: no copy
    assert "\n" not in str(e.value)


def test_openvino_missing_names_the_extra(int8_caption, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    backend._core.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_openvino)
    try:
        with pytest.raises(MissingExtraError, match=r"clipblip\[openvino\]"):
            BlipEngine.from_dir(int8_caption, provider="openvino")
    finally:
        backend._core.cache_clear()


def test_a_damaged_openvino_copy_is_refused(int8_caption, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(int8_caption, copy)
    with open(copy / "image_tower.openvino.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xfe")
    with pytest.raises(ModelLoadError, match="sha256 differs"):
        BlipEngine.from_dir(copy, provider="openvino")


def test_auto_runs_onnx_runtime_where_the_openvino_copy_fails_its_check(int8_caption, monkeypatch, tmp_path):
    from clipblip.engine import checks, session
    from clipblip.engine.machine import Machine
    from clipblip.errors import AccuracyError

    monkeypatch.setenv("CLIPBLIP_CACHE", str(tmp_path / "cache"))
    amx = Machine("test", "x86_64", ("avx2", "avx512bw", "avx512_vnni", "amx_int8", "amx_bf16"), "cpuid")
    monkeypatch.setattr(session, "this_machine", lambda: amx)
    real = checks.run_check

    def openvino_fails(graph, data, gate, info):
        record = real(graph, data, gate, info)
        return {**record, "passed": False} if isinstance(graph, backend.OpenVinoGraph) else record

    monkeypatch.setattr(checks, "run_check", openvino_fails)
    engine = BlipEngine.from_dir(int8_caption)  # auto: the copy fails here, ONNX Runtime's int8 tower passes
    assert engine.sessions["image_tower"].get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(AccuracyError, match=r"graph 'image_tower' \(\w+ \(fp16 weights\), OpenVINO CPU"):
        BlipEngine.from_dir(int8_caption, provider="openvino")  # asked for by name: refused, never a silent swap
