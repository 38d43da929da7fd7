import numpy as np
import pytest
from PIL import Image

from clipblip.engine import ClipEngine
from clipblip.errors import ImageError, UsageError
from tests.helpers import TEXTS, reference_image_embeddings, reference_text_embeddings


@pytest.fixture(scope="module")
def engine(tiny_clip):
    return ClipEngine.from_dir(tiny_clip.exported, provider="cpu", threads=2)


def test_image_embeddings_match_transformers_on_photos(tiny_clip, engine, photos, odd_images):
    images = photos + list(odd_images.values())
    got = engine.embed_images(images)
    ref = reference_image_embeddings(tiny_clip.model, tiny_clip.processor, images)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.abs(got - ref).max() < 1e-4


def test_text_embeddings_match_transformers(tiny_clip, engine):
    got = engine.embed_texts(TEXTS)
    ref = reference_text_embeddings(tiny_clip.model, tiny_clip.processor.tokenizer, TEXTS)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-4


def test_each_text_alone_matches_the_batch(engine):
    together = engine.embed_texts(TEXTS)
    alone = np.stack([engine.embed_texts([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_image_inputs_may_be_paths_pil_or_arrays(engine, photos):
    pil = Image.open(photos[0]).convert("RGB")
    embeddings = engine.embed_images([photos[0], str(photos[0]), pil, np.asarray(pil)])
    np.testing.assert_allclose(embeddings[1:], np.repeat(embeddings[:1], 3, axis=0), atol=1e-6)


def test_split_batches_equal_one_by_one(tiny_clip, photos, odd_images):
    images = photos + list(odd_images.values())[:5]
    split = ClipEngine.from_dir(tiny_clip.exported, provider="cpu", max_batch=3)
    alone = np.stack([split.embed_images([i])[0] for i in images])
    np.testing.assert_allclose(split.embed_images(images), alone, atol=1e-6)
    texts = TEXTS * 2
    np.testing.assert_allclose(split.embed_texts(texts), np.stack([split.embed_texts([t])[0] for t in texts]),
                               atol=1e-6)


def test_similarity_and_classify_follow_clip(tiny_clip, engine, photos):
    labels = ["cat", "woman", "box", "car"]
    sim = engine.similarity(photos, labels)
    assert sim.shape == (2, 4)
    ref_img = reference_image_embeddings(tiny_clip.model, tiny_clip.processor, photos)
    prompts = [f"a photo of a {l}." for l in labels]
    ref_txt = reference_text_embeddings(tiny_clip.model, tiny_clip.processor.tokenizer, prompts)
    logits = tiny_clip.model.logit_scale.exp().item() * ref_img @ ref_txt.T
    ref_probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for row, ranked in zip(ref_probs, engine.classify(photos, labels)):
        assert [l for l, _ in ranked] == [labels[i] for i in np.argsort(-row)]
        np.testing.assert_allclose([p for _, p in ranked], np.sort(row)[::-1], atol=1e-4)
        assert abs(sum(p for _, p in ranked) - 1) < 1e-5


def test_empty_inputs_give_empty_arrays(engine):
    assert engine.embed_images([]).shape == (0, engine.embed_dim)
    assert engine.embed_texts([]).shape == (0, engine.embed_dim)


def test_bad_arguments_are_named(engine, photos, tmp_path):
    with pytest.raises(UsageError, match="labels"):
        engine.classify(photos, [])
    for template in ("no slot", "a {} photo {}", "a {0}", "a {label}", "a { photo", "a {:>9}"):
        with pytest.raises(UsageError, match="template"):
            engine.classify(photos, ["cat"], template=template)
    literal = engine.classify(photos[:1], ["cat"], template="{{a}} photo of a {}")  # literal braces are kept
    assert literal[0][0][0] == "cat"
    with pytest.raises(ImageError, match="missing.png"):
        engine.embed_images([tmp_path / "missing.png"])


def test_cuda_without_cuda_is_a_provider_error(tiny_clip):
    import onnxruntime as ort

    from clipblip.errors import ProviderError

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine's ONNX Runtime offers CUDA; the no-CUDA error cannot be provoked here")
    with pytest.raises(ProviderError, match="cuda"):
        ClipEngine.from_dir(tiny_clip.exported, provider="cuda")


class CountingSession:
    """Wraps a session and counts the texts its runs were given."""

    def __init__(self, session):
        self.session, self.texts = session, 0

    def run(self, names, feeds):
        self.texts += len(feeds["input_ids"])
        return self.session.run(names, feeds)


def test_a_label_set_runs_the_text_tower_once(tiny_clip, photos):
    engine = ClipEngine.from_dir(tiny_clip.exported, provider="cpu")
    counter = engine.sessions["text_tower"] = CountingSession(engine.sessions["text_tower"])
    first = engine.classify(photos, ["cat", "dog", "car"])
    assert counter.texts == 3
    again = engine.classify(photos[:1], ["dog", "cat", "car"])  # same texts, other order
    assert counter.texts == 3 and dict(again[0]) == pytest.approx(dict(first[0]), abs=1e-6)
    engine.embed_texts(["a photo of a cat.", "a new text", "a new text"])  # one new text, given twice
    assert counter.texts == 4
    engine.text_cache.clear()
    after = engine.classify(photos[:1], ["cat", "dog", "car"])[0]
    assert dict(after) == pytest.approx(dict(first[0]), abs=1e-6) and counter.texts == 7


def test_the_text_cache_is_bounded_and_keeps_only_finite_rows():
    from clipblip.engine.cache import TextCache

    cache = TextCache(max_items=2)

    def compute(texts):
        return np.array([[np.nan, 0.0] if t == "bad" else [len(t), 1.0] for t in texts], dtype=np.float32)

    rows, errors = cache.embed(["a", "bb", "ccc", "bad"], compute, 2, "text embedding")
    assert rows[:3, 0].tolist() == [1, 2, 3] and list(errors) == [3] and "item 3" in str(errors[3])
    assert len(cache) == 2 and "bad" not in cache._rows and "a" not in cache._rows  # least recent dropped
