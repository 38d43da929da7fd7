import json

import pytest

from clipblip import demo


def test_demo_writes_results_with_the_random_banner(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "CLIP_FALLBACK", "random:clip-tiny")  # the real demo uses random:clip-base
    messages = []
    demo.run_demo(tmp_path, progress=messages.append)
    results = json.loads((tmp_path / "clip_results.json").read_text())
    assert results["random_weights"] is True and results["model"] == "random:clip-tiny"
    assert [r["image"] for r in results["classify"]] == list(demo.PHOTOS)
    assert "RANDOM WEIGHTS" in (tmp_path / "README.md").read_text()
    assert (tmp_path / "clip_similarity.png").stat().st_size > 0
    assert any("RANDOM" in m for m in messages)
    demo.run_demo(tmp_path, progress=messages.append)  # a second run reuses the export
    assert any("reusing" in m for m in messages)


@pytest.mark.slow
def test_full_demo_on_clip_base(tmp_path):
    demo.run_demo(tmp_path, progress=print)
    assert json.loads((tmp_path / "clip_results.json").read_text())["classify"]
