"""Hostile texts: valid results or a text error, never a crash; long texts cost little."""

import time

import numpy as np
import pytest

from clipblip.engine import BlipEngine, ClipEngine
from clipblip.errors import GenerationConfigError, TextInputError

ODD_TEXTS = ["", "   \t\n  ", "🐱🚀✨" * 30, "ctrl\x01\x02\x1b[31mred\x7f", "nul\x00inside", "مرحبا بالعالم",
             "שלום עולם", "a\u202eb\u200fc", "\ufeffbom", "x" * 3000, "中" * 500]


@pytest.fixture(scope="module")
def engine(tiny_clip):
    return ClipEngine.from_dir(tiny_clip.exported)


def test_odd_texts_embed(engine):
    embeddings = engine.embed_texts(ODD_TEXTS)
    assert embeddings.shape == (len(ODD_TEXTS), engine.embed_dim) and np.isfinite(embeddings).all()


class SeenLengths:
    """Wraps a tokenizers.Tokenizer and records the length of every text handed to encode_batch."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lengths = tokenizer, []

    def encode_batch(self, texts, *args, **kwargs):
        self.lengths += [len(t) for t in texts]
        return self.tokenizer.encode_batch(texts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_megabyte_text_is_capped_before_tokenising(engine, monkeypatch):
    spy = SeenLengths(engine.tokenizer.tokenizer)
    monkeypatch.setattr(engine.tokenizer, "tokenizer", spy)
    big = engine.embed_texts(["word " * 200_000])  # 1 MB
    assert spy.lengths and max(spy.lengths) <= 10_000  # the tokenizer never sees the megabyte
    np.testing.assert_allclose(big, engine.embed_texts(["word " * 200]), atol=1e-6)  # same 77 tokens


@pytest.mark.slow  # a wall-clock bound: only a guard against a hang, so generous, and kept out of `make test`
def test_a_megabyte_text_takes_no_time(engine):
    start = time.perf_counter()
    engine.embed_texts(["word " * 200_000] * 4)
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["nested"]])
def test_non_strings_are_text_errors(engine, bad):
    with pytest.raises(TextInputError, match="text 1: expected a string"):
        engine.embed_texts(["fine", bad])


def test_prompts_and_questions(blip_caption, blip_vqa, photos):
    caption = BlipEngine.from_dir(blip_caption.exported)
    with pytest.raises(TextInputError, match="prompt"):
        caption.caption(photos, prompt=7)
    with pytest.raises(GenerationConfigError, match="positions"):
        caption.caption(photos[:1], prompt="word " * 1000, max_new_tokens=30)  # 512 positions, prompt fills them
    assert all(isinstance(c, str) for c in caption.caption(photos, prompt="\x00\u202e🐱", max_new_tokens=3))
    vqa = BlipEngine.from_dir(blip_vqa.exported)
    with pytest.raises(TextInputError, match="2 given for 1 images"):
        vqa.answer(photos[:1], ["a?", "b?"])
    assert len(vqa.answer(photos, ["", "x" * 100_000], max_new_tokens=2)) == 2
