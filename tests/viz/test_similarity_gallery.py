import numpy as np
from matplotlib.offsetbox import AnnotationBbox

from clipblip.viz import caption_gallery, match_heatmaps, similarity_heatmap, topk_bars, vqa_gallery


def texts_of(ax):
    return [t.get_text() for t in ax.texts]


def test_similarity_heatmap_has_values_wrapped_labels_and_thumbnails():
    matrix = np.array([[0.1, 0.25, -0.3], [0.5, 0.0, 0.9]])
    images = [np.zeros((20, 40, 3), np.uint8), np.full((30, 30, 3), 200, np.uint8)]
    long_text = "a very long description of a photograph that must wrap"
    fig = similarity_heatmap(matrix, ["one.jpg", "two.png"], ["a", long_text, "c"], images=images, note="NOTE")
    ax = fig.axes[0]
    assert texts_of(ax) == [f"{v:.2f}" for v in matrix.ravel()]
    assert "\n" in ax.get_xticklabels()[1].get_text()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["one.jpg", "two.png"]
    assert sum(isinstance(a, AnnotationBbox) for a in ax.artists) == 2
    assert "NOTE" in fig.get_suptitle()
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), matrix)


def test_match_heatmaps_show_itm_and_itc():
    itm, itc = np.array([[0.9, 0.1]]), np.array([[0.3, -0.2]])
    fig = match_heatmaps(itm, itc, ["a.jpg"], ["x", "y"])
    titled = [ax for ax in fig.axes if ax.images]
    assert ["ITM" in titled[0].get_title(), "ITC" in titled[1].get_title()] == [True, True]
    assert texts_of(titled[0]) == ["0.90", "0.10"] and texts_of(titled[1]) == ["0.30", "-0.20"]


def test_galleries():
    images = [np.zeros((10, 10, 3), np.uint8)] * 2
    fig = caption_gallery(images, ["a cat", "a dog"])
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["a cat", "a dog"]
    fig = vqa_gallery(images, ["what?", "who?"], ["cat", "me"])
    assert fig.axes[1].get_title(loc="left") == "Q: who?\nA: me"
    ranked = [[("cat", 0.7), ("dog", 0.2), ("car", 0.1)], [("dog", 0.6), ("cat", 0.4), ("car", 0.0)]]
    fig = topk_bars(images, ranked, k=2)
    bars = [ax for ax in fig.axes if ax.patches]
    assert [t.get_text() for t in bars[0].get_yticklabels()] == ["dog", "cat"]  # best at the top
    assert [p.get_width() for p in bars[0].patches] == [0.2, 0.7]
