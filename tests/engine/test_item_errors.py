"""Per-item errors carry the caller's index, in every chunk and every engine method that checks rows.

The case: items [good, truncated.jpg, good, X, good], where the image tower returns NaN for X only.
Every method must report exactly item 1 (ImageError) and item 3 (NumericalError), with finite results
for items 0, 2 and 4, whatever the chunk size.
"""

import numpy as np
import pytest
from PIL import Image

from clipblip.engine import BlipEngine, ClipEngine
from clipblip.errors import ImageError, NumericalError, PartialFailure
from tests.helpers import BLIP_QUESTIONS


class PoisonRows:
    """Wraps a session: output rows whose input row equals ``poison`` (for ``feed``) become NaN."""

    def __init__(self, session, feed: str, poison: np.ndarray):
        self.session, self.feed, self.poison = session, feed, poison

    def run(self, names, feeds):
        out = self.session.run(names, feeds)
        hit = [r for r, row in enumerate(feeds[self.feed])
               if row.shape == self.poison.shape and np.array_equal(row, self.poison)]
        if hit:
            out[0] = out[0].copy()
            out[0][hit] = np.nan
        return out

    def __getattr__(self, name):
        return getattr(self.session, name)


@pytest.fixture(scope="module")
def items(photos, tmp_path_factory):
    truncated = tmp_path_factory.mktemp("items") / "truncated.jpg"
    truncated.write_bytes(photos[0].read_bytes()[:300])
    poison = Image.new("RGB", (24, 20), (3, 141, 59))
    return [photos[0], truncated, Image.open(photos[1]), poison, np.full((30, 40, 3), 200, np.uint8)]


def poisoned(engine, items):
    pixels = engine.preprocess([items[3]])[0]
    engine.sessions["image_tower"] = PoisonRows(engine.sessions["image_tower"], "pixel_values", pixels)
    return engine


def assert_items_1_and_3_failed(errors, results_ok):
    assert sorted(errors) == [1, 3]
    assert isinstance(errors[1], ImageError) and "truncated.jpg" in str(errors[1])
    assert isinstance(errors[3], NumericalError) and "item 3" in str(errors[3])
    assert all(results_ok(i) for i in (0, 2, 4))


def finite(x) -> bool:
    return x is not None and bool(np.isfinite(np.asarray(x, dtype=np.float64)).all())


CLIP_METHODS = {
    "embed_images": (lambda e, items: e.embed_images(items, return_errors=True), lambda r, i: finite(r[i])),
    "similarity": (lambda e, items: e.similarity(items, ["a cat", "a box"], return_errors=True),
                   lambda r, i: finite(r[i])),
    "classify": (lambda e, items: e.classify(items, ["cat", "box"], return_errors=True),
                 lambda r, i: r[i] is not None and finite([p for _, p in r[i]])),
}


@pytest.mark.parametrize("max_batch", [1, 2, 5])
@pytest.mark.parametrize("method", sorted(CLIP_METHODS))
def test_clip_reports_each_failed_item_under_its_own_index(clip_with_attentions, items, method, max_batch):
    engine = poisoned(ClipEngine.from_dir(clip_with_attentions.exported, max_batch=max_batch), items)
    call, ok = CLIP_METHODS[method]
    results, errors = call(engine, items)
    assert_items_1_and_3_failed(errors, lambda i: ok(results, i))
    with pytest.raises(PartialFailure) as caught:  # the same, as an exception
        getattr(engine, method)(items, *(["a cat"] if method != "embed_images" else []))
    assert sorted(caught.value.errors) == [1, 3]


@pytest.mark.parametrize("max_batch", [1, 2, 5])
def test_clip_text_rows_are_reported_under_their_own_index(clip_with_attentions, max_batch):
    engine = ClipEngine.from_dir(clip_with_attentions.exported, max_batch=max_batch)
    texts = ["a cat", "a dog", "a box", "the poisoned one", "a tree"]
    ids, _ = engine.tokenizer([texts[3]])
    engine.sessions["text_tower"] = PoisonRows(engine.sessions["text_tower"], "input_ids", ids[0])
    results, errors = engine.embed_texts(texts, return_errors=True)
    assert list(errors) == [3] and isinstance(errors[3], NumericalError) and "item 3" in str(errors[3])
    assert np.isfinite(results[[0, 1, 2, 4]]).all()


@pytest.mark.parametrize("max_batch", [1, 2, 5])
def test_blip_captions_answers_and_match_report_each_item(blip_caption, blip_vqa, blip_itm, items, max_batch):
    caption = poisoned(BlipEngine.from_dir(blip_caption.exported, max_batch=max_batch), items)
    results, errors = caption.generate_captions(items, max_new_tokens=4, return_errors=True)
    assert_items_1_and_3_failed(errors, lambda i: results[i] is not None and results[i].token_ids)

    vqa = poisoned(BlipEngine.from_dir(blip_vqa.exported, max_batch=max_batch), items)
    results, errors = vqa.generate_answers(items, BLIP_QUESTIONS[0], max_new_tokens=3, return_errors=True)
    assert_items_1_and_3_failed(errors, lambda i: results[i] is not None and results[i].token_ids)

    itm = poisoned(BlipEngine.from_dir(blip_itm.exported, max_batch=max_batch), items)
    scores, errors = itm.match(items, ["a cat", "a box"], return_errors=True)
    assert_items_1_and_3_failed(errors, lambda i: finite(scores.itm[i]) and finite(scores.itc[i]))
    with pytest.raises(PartialFailure) as caught:
        itm.match(items, "a cat")
    assert sorted(caught.value.errors) == [1, 3]


def test_a_single_item_gets_its_own_error_or_data(clip_with_attentions, items):
    engine = poisoned(ClipEngine.from_dir(clip_with_attentions.exported), items)
    with pytest.raises(NumericalError, match="item 0"):
        engine.embed_images(items[3])
    results, errors = engine.embed_images(items[3], return_errors=True)
    assert results.shape == (1, engine.embed_dim) and isinstance(errors[0], NumericalError)
    results, errors = engine.embed_images([items[0]], return_errors=True)
    assert errors == {} and np.isfinite(results).all()
