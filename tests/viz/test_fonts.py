"""Emoji, symbols, other scripts and blank texts in figure labels: real glyphs, no missing-glyph warnings."""

import io
import subprocess
import sys
import textwrap
import warnings
from importlib import util

import numpy as np
import pytest

from clipblip import viz
from clipblip.viz import display_label, similarity_heatmap
from clipblip.viz.style import NOTO_FONTS_PACKAGE, setup_fonts

TEXTS = ["猫と犬 café naïve Ünïcödé", "🐱🐶🚀 emoji only", "❤️ 👍🏽 ✨", "", "   "]
MORE = ["สวัสดีครับ नमस्ते مرحبا", "★ ♠ ⚡ ☂ ✓ → ∞", "👨‍👩‍👧 zwj\u200b"]
needs_noto = pytest.mark.skipif(util.find_spec(NOTO_FONTS_PACKAGE) is None,
                                reason="manimgx-fonts (import manimgx_fonts) of the viz extra is not installed")


def missing_glyph_warnings(fig) -> list[str]:
    """Draw the figure to PNG; the missing-glyph warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(io.BytesIO(), format="png", dpi=60)
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


def heatmap(texts):
    return similarity_heatmap(np.linspace(0, 1, 2 * len(texts)).reshape(2, len(texts)), ["a.png", "b.png"], texts)


@needs_noto
def test_cjk_emoji_symbols_and_accents_render_without_missing_glyphs():
    names = setup_fonts()
    assert {"Noto Emoji", "Noto Sans Symbols", "Noto Sans Thai"} <= set(names)
    assert missing_glyph_warnings(heatmap(TEXTS + MORE)) == []


def every_figure(texts):
    """Each figure function of clipblip.viz, with ``texts`` wherever it shows user text or tokens."""
    rng = np.random.default_rng(0)
    n, grid = len(texts), (2, 2)
    views = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    square = rng.random((2, 2, n, n))
    square /= square.sum(-1, keepdims=True)  # (layers, heads, n, n), rows sum to 1
    yield "similarity", heatmap(texts)
    yield "match", viz.match_heatmaps(rng.random((2, n)), rng.random((2, n)), ["a.png", "b.png"], texts)
    yield "token attention", viz.token_attention_figure(square, texts)
    yield "token attention, one layer", viz.token_attention_figure(square, texts, layer=1, head=0)
    yield "cross-attention", viz.cross_attention_figure(views[0], texts, rng.random((2, 2, n, 5)), grid,
                                                        caption=" ".join(texts))
    yield "captions", viz.caption_gallery(views, texts[:2])
    yield "vqa", viz.vqa_gallery(views, texts[:2], texts[-2:])
    yield "top-k", viz.topk_bars(views, [[(t, 1 / n) for t in texts]] * 2)
    yield "toy", viz.toy_attention_figure(texts)


# slow (4 s): every figure rendered; make test-all runs it
@pytest.mark.slow
@needs_noto
def test_every_figure_renders_every_script_without_missing_glyphs():
    for name, fig in every_figure(TEXTS + MORE):
        assert missing_glyph_warnings(fig) == [], name


def test_the_glyph_check_warns_without_the_fallback_fonts():
    # A fresh interpreter: the fallback font list set up in this process must not leak into the control.
    script = textwrap.dedent(f"""
        import io, warnings
        import numpy as np
        from matplotlib import rcParams
        from clipblip.viz import similarity_heatmap
        from clipblip.viz.style import setup_fonts
        setup_fonts()  # fonts registered, then left out of the family list
        rcParams["font.family"] = ["DejaVu Sans"]
        fig = similarity_heatmap(np.zeros((1, 1)), ["a.png"], [{TEXTS[1]!r}])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fig.savefig(io.BytesIO(), format="png", dpi=60)
        print("\\n".join(str(w.message) for w in caught))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "missing from font" in run.stdout and "128054" in run.stdout  # 🐶 DOG FACE


def test_blank_texts_get_a_visible_label():
    ax = heatmap(TEXTS).axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[3:] == ['""', '""']
    assert labels[1] == TEXTS[1] and all(labels)
    assert display_label("\u200b\ufe0f ") == '""' and display_label(" a ") == " a "
