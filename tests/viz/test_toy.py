import io
import warnings

import numpy as np

from clipblip.viz import TOY_TOKENS, cjk_font, toy_attention, toy_attention_figure


def render(fig) -> list[str]:
    """Draw the figure; return the missing-glyph warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(io.BytesIO(), format="png")
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


def test_weights_are_softmax_rows():
    toy = toy_attention(seed=3, d_model=8, heads=2)
    n = len(TOY_TOKENS)
    assert toy.weights.shape == (2, n, n) and toy.q.shape == (2, n, 4)
    np.testing.assert_allclose(toy.weights.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(toy.output, toy.weights @ toy.v)
    assert not np.allclose(toy.weights[0], toy.weights[1])  # the heads differ
    assert not np.allclose(toy.weights, toy_attention(seed=4).weights)  # the seed matters


def test_figure_shows_the_steps_with_token_labels():
    fig = toy_attention_figure(seed=0)
    axes = [ax for sub in fig.subfigs for ax in sub.axes]
    assert len(axes) == 8
    titles = [ax.get_title() for ax in axes]
    assert any("single head" in t for t in titles) and any("mean of 2 heads" in t for t in titles)
    single = next(ax for ax in axes if "single head" in ax.get_title())
    assert [t.get_text() for t in single.get_yticklabels()] == list(TOY_TOKENS)
    assert [t.get_text() for t in single.get_xticklabels()] == list(TOY_TOKENS)
    np.testing.assert_allclose(np.asarray(single.images[0].get_array()).sum(axis=1), 1.0, atol=1e-9)


def test_cjk_tokens_render_with_real_glyphs():
    assert cjk_font() is not None, "the Noto Sans CJK font of the viz extra is not installed"
    assert render(toy_attention_figure()) == []


def test_the_glyph_check_can_fail_without_the_cjk_font():
    from matplotlib import rc_context

    with rc_context({"font.family": ["DejaVu Sans"]}):
        assert any("我" in w or "25105" in w for w in render(toy_attention_figure()))
