"""What every figure must say plainly: the random-weights note whole on narrow figures, probabilities on one
colour scale, cells that differ printed differently, labels drawn as written."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from clipblip.viz import (RANDOM_WEIGHTS_NOTE, caption_gallery, cross_attention_figure, image_attention_figure,
                          match_heatmaps, similarity_heatmap, token_attention_figure, topk_bars)
from clipblip.viz.style import display_label, distinct_format, png_bytes

GRID = (3, 3)


def attention(layers=2, heads=2, tokens=10, seed=0):
    weights = np.random.default_rng(seed).random((layers, heads, tokens, tokens))
    return weights / weights.sum(-1, keepdims=True)


def narrow_figures():
    view = np.zeros((30, 30, 3), np.uint8)
    note = RANDOM_WEIGHTS_NOTE
    yield "attention --layer --head", image_attention_figure(view, attention(), GRID, layer=1, head=0, note=note)
    yield "attention --rollout", image_attention_figure(view, attention(), GRID, rollout=True, note=note)
    yield "text attention --layer", token_attention_figure(attention(tokens=3), ["a", "b", "c"], layer=0, note=note)
    yield "similarity, one column", similarity_heatmap(np.array([[0.3]]), ["a.jpg"], ["a"], note=note,
                                                       title="Chinese-CLIP cosine similarity")
    yield "match, one column", match_heatmaps(np.array([[0.5]]), np.array([[0.1]]), ["a.jpg"], ["a"], note=note)
    yield "cross-attention, one word", cross_attention_figure(view, ["cat"], attention(tokens=10)[:, :, :1],
                                                               GRID, caption="a long caption " * 6, note=note)
    yield "caption gallery, one image", caption_gallery([view], ["a cat"], note=note)
    yield "top-k bars, one image", topk_bars([view], [[("cat", 0.9)]], note=note)


@pytest.mark.parametrize("name, fig", list(narrow_figures()), ids=[name for name, _ in narrow_figures()])
def test_the_random_weights_note_is_whole_on_narrow_figures(name, fig):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    page = fig.bbox
    notes = [t for t in fig.findobj(Text) if "RANDOM WEIGHTS" in t.get_text()]
    assert notes, name
    for text in notes:
        box = text.get_window_extent(renderer)
        assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1 and page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1, (
            f"{name}: the note spans x {box.x0:.0f}..{box.x1:.0f} of a figure {page.x1:.0f} wide")
        assert " ".join(text.get_text().split()).endswith(RANDOM_WEIGHTS_NOTE)  # wrapped, nothing lost


def test_itm_probabilities_have_a_fixed_colour_scale_and_cells_that_differ_print_differently():
    itm = np.array([[0.4557, 0.4566], [0.4561, 0.4563]])  # what a random BLIP gives: four cells once all "0.46"
    fig = match_heatmaps(itm, np.array([[0.1, 0.2], [0.3, 0.4]]), ["a.jpg", "b.jpg"], ["x", "y"])
    itm_ax, itc_ax = [ax for ax in fig.axes if ax.images]
    assert itm_ax.images[0].get_clim() == (0.0, 1.0)
    cells = [t.get_text() for t in itm_ax.texts]
    assert len(set(cells)) == 4 and cells[0] == "0.4557"
    assert itc_ax.images[0].get_clim() == (0.1, 0.4)  # cosines span their own range...
    assert "scaled" in fig.axes[-1].get_ylabel()  # ...and their colour bar says so


def test_distinct_format_uses_the_fewest_decimals_that_tell_values_apart():
    assert distinct_format([0.1, 0.25]) == "{:.2f}"
    assert distinct_format([0.4557, 0.4561, 0.4557]) == "{:.4f}" and distinct_format([0.4557, 0.4566]) == "{:.3f}"
    assert distinct_format([0.5, 0.5]) == "{:.2f}" and distinct_format([]) == "{:.2f}"
    assert distinct_format([0.1, 0.1 + 1e-12]) == "{:.2f}"  # float noise is no difference
    assert distinct_format([0.1, 0.2], least=3) == "{:.3f}"


def test_dollar_signs_are_drawn_as_written_not_as_broken_mathtext():
    labels = ["a $x^$ b", "$\\frac$", "$5"]  # a random BLIP's caption can hold any of these
    assert display_label("$5") == "\\$5" and display_label(display_label("$5")) == "\\$5"
    fig = similarity_heatmap(np.zeros((1, 3)), ["$^$.png"], labels, title="cost $^$")
    fig2 = caption_gallery([np.zeros((4, 4, 3), np.uint8)], labels[:1])
    assert png_bytes(fig) and png_bytes(fig2)  # mathtext would raise ValueError while drawing
