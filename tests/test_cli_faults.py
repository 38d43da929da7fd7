"""The CLI under faults: per-item errors with a 'partial' exit, interruptions that keep finished
items, atomic outputs, and exports that leave nothing behind when stopped."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from clipblip.engine import BlipEngine
from clipblip.errors import EXIT_CODES
from clipblip.export import export_model
from tests.helpers import pickled_copy, run_cli


def test_one_bad_image_is_reported_and_the_rest_answered(blip_caption, tiny_clip, photos, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"garbage")
    code, out, err = run_cli(capsys, "caption", blip_caption.exported, photos[0], bad, photos[1], "--json",
                         "--max-new-tokens", 4, "--max-batch", 2)
    assert code == EXIT_CODES["PartialFailure"] == 16
    results = json.loads(out)["results"]
    assert [("text" in r, "error" in r) for r in results] == [(True, False), (False, True), (True, False)]
    assert "broken.jpg" in results[1]["error"] and results[1]["error_type"] == "ImageError"
    assert err.count("\n") == 1 and "broken.jpg" in err

    code, out, _ = run_cli(capsys, "similarity", tiny_clip.exported, "--images", bad, *photos, "--texts", "a", "--json")
    doc = json.loads(out)
    assert code == 16 and doc["similarity"][0] is None and len(doc["similarity"][1]) == 1
    assert doc["errors"] == [{"index": 0, "image": str(bad), "error": doc["errors"][0]["error"],
                              "error_type": "ImageError"}]

    code, _, _ = run_cli(capsys, "embed", tiny_clip.exported, "--images", photos[0], bad, "--out", tmp_path / "e.npz")
    saved = np.load(tmp_path / "e.npz")
    assert code == 16 and list(saved["indices"]) == [0] and np.isfinite(saved["embeddings"]).all()


def test_an_interrupted_batch_keeps_its_finished_items(blip_caption, photos, monkeypatch, capsys):
    real = BlipEngine.generate_captions
    calls = []

    def interrupted_on_third_chunk(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what Ctrl-C or SIGTERM raises in the middle of a batch
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BlipEngine, "generate_captions", interrupted_on_third_chunk)
    code, out, err = run_cli(capsys, "caption", blip_caption.exported, *(photos * 3), "--json", "--max-batch", 2,
                         "--max-new-tokens", 3)
    doc = json.loads(out)
    assert code == 130 and doc["interrupted"] is True
    assert [("text" in r) for r in doc["results"]] == [True] * 4 + [False] * 2
    assert doc["results"][5]["error_type"] == "Interrupted" and "interrupted after 4 of 6" in err


@pytest.mark.slow  # builds the full-size random:clip-base and exports it until the signal: memory and seconds
def test_sigterm_during_export_leaves_nothing(tmp_path):
    out = tmp_path / "model"
    process = subprocess.Popen([sys.executable, "-m", "clipblip", "export", "random:clip-base", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".model.partial-*/*.onnx")):
        time.sleep(0.2)  # wait until a graph is being written
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert list(tmp_path.iterdir()) == []
    assert process.returncode == 130, err[-2000:]


@pytest.mark.parametrize("tiny_clip", ["square30"], indirect=True)  # one checkpoint shows it
def test_pickle_only_checkpoints_need_explicit_permission(tiny_clip, tmp_path, capsys):
    folder = pickled_copy(tiny_clip.checkpoint, tmp_path / "pickled")
    code, _, err = run_cli(capsys, "export", folder, "--out", tmp_path / "a")
    assert code == 3 and "--allow-pickle" in err and not (tmp_path / "a").exists()
    manifest = export_model(str(folder), tmp_path / "b", allow_pickle=True)
    assert manifest.graphs["image_tower"].parity["max_abs_diff"] <= 1e-4


def test_remote_code_is_never_run(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilModel"],
        "auto_map": {"AutoModel": "modeling_evil.EvilModel"}}))
    (folder / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    result = subprocess.run([sys.executable, "-m", "clipblip", "export", str(folder), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True)
    assert result.returncode == 3 and "model type 'evil' is not supported" in result.stderr
    assert "remote code ran" not in result.stderr


@pytest.mark.parametrize("argv, code, words", [
    (["caption", "{caption}", "{photo}", "--max-new-tokens", "0"], 11, "max_new_tokens=0"),
    (["caption", "{caption}", "{photo}", "--max-new-tokens", "100000"], 11, "positions"),
    (["classify", "{clip}", "{photo}", "--labels", "a", "--template", "no slot"], 2, "template"),
    (["classify", "{clip}", "{photo}", "--labels", "a", "--provider", "cuda"], 8, "cuda"),
])
def test_each_error_is_one_line_with_its_exit_code(argv, code, words, blip_caption, tiny_clip, photos, capsys):
    import onnxruntime

    if "cuda" in argv and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here, so asking for it is not an error")
    filled = [a.format(caption=blip_caption.exported, clip=tiny_clip.exported, photo=photos[0]) for a in argv]
    got, out, err = run_cli(capsys, *filled)
    assert got == code and words in err and err.strip().count("\n") == 0 and "Traceback" not in err
