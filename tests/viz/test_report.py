import re
import subprocess

import numpy as np
import pytest
from PIL import Image


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


pytestmark = pytest.mark.slow  # on the whole demo's report (tiny_demo, 16 s): make test-all runs it


@pytest.fixture(scope="module")
def report(tiny_demo):
    return tiny_demo.out / "report.html"


def test_report_is_self_contained_with_every_figure(report):
    html = report.read_text(encoding="utf-8")
    images = re.findall(r"<img [^>]*src='([^']*)'", html)
    assert len(images) >= 12 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    assert "RANDOM WEIGHTS" in html and "random:clip-tiny" in html
    for heading in ("Self-attention, step by step", "CLIP", "BLIP captions", "visual question answering",
                    "image–text matching", "Timings"):
        assert heading in html


def test_report_renders_in_headless_chromium(report, chromium, tmp_path):
    profile = tmp_path / "profile"
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                          "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = re.search(r'data-images-rendered="(\d+)/(\d+)"', dom.stdout)
    assert rendered, "the page's load handler did not run"
    assert rendered.group(1) == rendered.group(2) and int(rendered.group(2)) >= 12

    shot = tmp_path / "shot.png"
    result = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,2400",
                             f"--screenshot={shot}", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (2400, 1280)
    colourful = (pixels.max(-1) - pixels.min(-1)) > 60  # figures, not just black text on white
    assert colourful.mean() > 0.05
