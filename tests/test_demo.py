import json
import os
import signal
import subprocess
import sys

import pytest

from clipblip import demo
from clipblip.errors import ModelSourceError
from clipblip.manifest import Manifest
from tests.helpers import TINY_SOURCES


@pytest.mark.slow  # the whole demo on tiny models (16 s, with tests/viz/test_report.py): make test-all runs it
def test_demo_writes_results_with_the_random_banner(tiny_demo, monkeypatch):
    monkeypatch.setattr(demo, "SOURCES", TINY_SOURCES)  # the real demo falls back to the *-base presets
    tmp_path, messages = tiny_demo.out, list(tiny_demo.messages)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["clip"]["random_weights"] is True and results["clip"]["model"] == "random:clip-tiny"
    assert [r["image"] for r in results["clip"]["classify"]] == list(demo.PHOTOS)
    chinese = results["chinese_clip"]
    assert chinese["random_weights"] is True and chinese["template"] == "一张{}的照片。"
    assert [sorted(l["label"] for l in r["labels"]) for r in chinese["classify"]] == [sorted(demo.CHINESE_LABELS)] * 2
    blip = results["blip"]
    assert all(s["random_weights"] for s in blip["sources"].values())
    assert [c["image"] for c in blip["captions"]] == list(demo.PHOTOS) and blip["captions"][0]["token_ids"]
    assert all(c["text"].startswith(demo.CAPTION_PROMPT) for c in blip["prompted_captions"]["results"])
    assert len(blip["vqa"]["results"]) == 2 and len(blip["match"]["itm"]) == 2
    readme = (tmp_path / "README.md").read_text()
    assert "RANDOM WEIGHTS" in readme and "BLIP captions" in readme and "Timings" in readme
    assert "Chinese-CLIP: `random:chinese-clip-tiny` — **RANDOM WEIGHTS**" in readme and "穿制服的女人" in readme
    for png in ("clip_similarity.png", "blip_match.png"):
        assert (tmp_path / png).stat().st_size > 0
    assert any("nobody/not-cached-clip unavailable" in m for m in messages)
    said = []  # a second run reuses every export it finds (what run_demo calls for each model)
    for name in demo.SOURCES:
        folder = tmp_path / "models" / (name if "clip" in name else f"blip-{name}")
        assert demo.ensure_export(name, folder, said.append).source == Manifest.load(folder).source, name
    assert sum("reusing" in m for m in said) == len(demo.SOURCES) == 5


def test_the_demo_module_loads_no_torch():
    """Its exports run in a process of their own: the demo's process never holds torch or transformers."""
    code = "import sys, clipblip.demo; print(sorted(m for m in ('torch', 'transformers', 'onnx') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_an_export_in_its_own_process_raises_its_error_there_and_leaves_nothing(tmp_path):
    said = []
    with pytest.raises(ModelSourceError, match="unknown random preset.*random:clip-tiny"):
        demo.export_in_process(said.append, "random:clip-huge", tmp_path / "out")
    assert said == ["loading random:clip-huge"] and list(tmp_path.iterdir()) == []


@pytest.mark.slow  # processes killed and waited for (2.3 s): the suite's time is near its 4 minutes
def test_an_export_process_stopped_midway_leaves_nothing(tmp_path):
    seen = []

    def stop(message):
        if message.startswith("running"):  # PyTorch runs a traced graph, in the staging folder beside `out`
            seen.extend(p.name for p in tmp_path.iterdir())
            raise RuntimeError("stopped here")

    with pytest.raises(RuntimeError, match="stopped here"):
        demo.export_in_process(stop, "random:clip-tiny", tmp_path / "out")
    assert [name for name in seen if name.startswith(".out.partial-")]  # it was there when the process was stopped
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cores, available, plan", [
    (2, 24_000, (2, 1)), (8, 24_000, (2, 4)), (1, 24_000, (1, 1)), (8, 5_000, (1, 8)), (2, None, (1, 2))])
def test_exports_run_two_at_a_time_only_where_the_cores_and_memory_are(cores, available, plan, monkeypatch):
    monkeypatch.setattr(demo, "available_mb", lambda: available)  # None: a system that does not say
    assert demo.export_plan(cores) == plan


# slow (5 s): exports in processes; make test-all runs it
@pytest.mark.slow
def test_exports_run_side_by_side_and_one_that_fails_stops_those_not_started(tmp_path, monkeypatch):
    sources = {"clip": TINY_SOURCES["clip"], "chinese_clip": (("random:chinese-clip-huge", None),),
               "caption": TINY_SOURCES["caption"], "vqa": TINY_SOURCES["vqa"]}
    monkeypatch.setattr(demo, "SOURCES", sources)
    said = []
    with pytest.raises(ModelSourceError, match="none of random:chinese-clip-huge could be exported"):
        demo.export_models(tmp_path, said.append, ("chinese_clip", "clip", "caption", "vqa"), plan=(2, 1))
    # the other process had started CLIP's export, which ends; nothing after the failure starts
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["clip"]
    assert "[clip] loading random:clip-tiny" in said and "[chinese_clip] loading random:chinese-clip-huge" in said
    assert Manifest.load(tmp_path / "models" / "clip").source["model"] == "random:clip-tiny"


@pytest.mark.slow  # processes stopped and waited for (2.2 s): the suite's time is near its 4 minutes
def test_leaving_the_exports_early_stops_them_all_and_leaves_no_half_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "SOURCES", TINY_SOURCES)
    started = []

    def say(message):  # called in an export's thread
        if "exporting" in message:
            started.append(message)
            if len(started) == 2:  # Ctrl-C, while both exports trace a graph: KeyboardInterrupt in the main thread
                os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (an earlier test of
    try:                                                                  # the suite may have left another)
        with pytest.raises(KeyboardInterrupt):
            demo.export_models(tmp_path, say, plan=(2, 1))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert started and not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]
    for folder in (tmp_path / "models").iterdir():  # what is there is a whole export
        Manifest.load(folder)


@pytest.mark.slow
def test_full_demo_on_base_presets(tmp_path):
    results = demo.run_demo(tmp_path, progress=print)
    assert results["blip"]["captions"] and results["clip"]["classify"]
