"""Beam search, processors and sampling against transformers' generate() on the tiny caption and VQA models."""

import numpy as np
import pytest
import torch

from clipblip.engine import BlipEngine
from clipblip.engine import logits as lp
from clipblip.engine.generate import GenerationOptions
from clipblip.errors import GenerationConfigError
from tests.helpers import BLIP_QUESTIONS, GENERATION_CAP, varied_images

BEAM_CASES = [
    dict(num_beams=2),
    dict(num_beams=3),
    dict(num_beams=3, length_penalty=0.5),
    dict(num_beams=2, length_penalty=2.0, early_stopping=True),
    dict(num_beams=3, early_stopping=True),
    dict(num_beams=3, early_stopping="never"),
    dict(num_beams=2, early_stopping="never", length_penalty=-1.0),
    dict(num_beams=3, min_new_tokens=5),
    dict(num_beams=3, repetition_penalty=1.3),
    dict(num_beams=2, no_repeat_ngram_size=2),
    dict(num_beams=3, repetition_penalty=1.3, no_repeat_ngram_size=2, length_penalty=0.5, early_stopping="never"),
    dict(num_beams=2, min_new_tokens=3, length_penalty=2.0, early_stopping=True, repetition_penalty=1.3),
]
GREEDY_CASES = [dict(repetition_penalty=1.3), dict(no_repeat_ngram_size=2), dict(min_new_tokens=6),
                dict(repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=3)]


def case_id(case):
    return ",".join(f"{k}={v}" for k, v in case.items())


@pytest.fixture(scope="module")
def engines(blip_caption, blip_vqa):
    return {task: BlipEngine.from_dir(tiny.exported, provider="cpu", threads=2)
            for task, tiny in (("caption", blip_caption), ("vqa", blip_vqa))}


def reference(tiny, images, *, prompt=None, questions=None, max_new_tokens=GENERATION_CAP, **options):
    """transformers' generated ids per row, without the prompt and cut after [SEP]."""
    kwargs, skip = {}, 1
    if prompt is not None:
        enc = tiny.processor.tokenizer([prompt] * len(images), return_tensors="pt")
        kwargs, skip = dict(input_ids=enc.input_ids, attention_mask=enc.attention_mask), enc.input_ids.shape[1] - 1
    if questions is not None:
        enc = tiny.processor.tokenizer(questions, padding=True, return_tensors="pt")
        kwargs = dict(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    pixel_values = tiny.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = tiny.model.generate(pixel_values=pixel_values, max_new_tokens=max_new_tokens, do_sample=False,
                                  **kwargs, **options)
    eos = tiny.model.config.text_config.sep_token_id
    return [row[: row.index(eos) + 1] if eos in row else row for row in out[:, skip:].tolist()]


@pytest.mark.parametrize("case", BEAM_CASES + GREEDY_CASES, ids=case_id)
@pytest.mark.parametrize("prompt", [None, "a picture of"])
def test_captions_match_transformers(blip_caption, engines, photos, case, prompt):
    images = varied_images(photos)
    want = reference(blip_caption, images, prompt=prompt, **case)
    got = engines["caption"].generate_captions(images, prompt, GENERATION_CAP, **case)
    assert [g.token_ids for g in got] == want
    single = engines["caption"].generate_captions(images[1:2], prompt, GENERATION_CAP, **case)
    assert single[0].token_ids == reference(blip_caption, images[1:2], prompt=prompt, **case)[0]


@pytest.mark.parametrize("case", BEAM_CASES[:2] + BEAM_CASES[3:4] + BEAM_CASES[7:] + GREEDY_CASES[-1:], ids=case_id)
def test_answers_match_transformers(blip_vqa, engines, photos, case):
    images = varied_images(photos)
    want = reference(blip_vqa, images, questions=BLIP_QUESTIONS, **case)
    assert [g.token_ids for g in engines["vqa"].generate_answers(images, BLIP_QUESTIONS, GENERATION_CAP, **case)] \
        == want
    single = engines["vqa"].generate_answers(images[:1], BLIP_QUESTIONS[0], GENERATION_CAP, **case)
    # alone, the question is not padded: transformers' decoder attends to the padding, so ask it again
    assert single[0].token_ids == reference(blip_vqa, images[:1], questions=BLIP_QUESTIONS[:1], **case)[0]


LONG = 20  # long enough for repeats: the penalties change these outputs
LONG_CASES = [dict(num_beams=3, no_repeat_ngram_size=2), dict(num_beams=3, repetition_penalty=1.3),
              dict(num_beams=2, no_repeat_ngram_size=3, repetition_penalty=1.3), dict(no_repeat_ngram_size=2)]


@pytest.mark.parametrize("case", LONG_CASES, ids=case_id)
def test_penalties_over_longer_outputs(blip_caption, blip_vqa, engines, photos, case):
    images = varied_images(photos)
    for prompt in (None, "a picture of"):
        want = reference(blip_caption, images, prompt=prompt, max_new_tokens=LONG, **case)
        assert [g.token_ids for g in engines["caption"].generate_captions(images, prompt, LONG, **case)] == want
    want = reference(blip_vqa, images, questions=BLIP_QUESTIONS, max_new_tokens=LONG, **case)
    assert [g.token_ids for g in engines["vqa"].generate_answers(images, BLIP_QUESTIONS, LONG, **case)] == want


def test_beams_end_at_different_steps(blip_caption, photos):
    """The beam cases really exercise items finishing apart, and beams that end before the cap."""
    lengths = {len(ids) for ids in reference(blip_caption, varied_images(photos), num_beams=3)}
    assert len(lengths) >= 2


def test_io_binding_decoder_beams_like_the_host(blip_caption, engines, photos):
    bound = BlipEngine.from_dir(blip_caption.exported, provider="cpu", threads=2, io_binding=True)
    images = varied_images(photos)
    for case in (BEAM_CASES[1], BEAM_CASES[-2]):
        assert [g.token_ids for g in bound.generate_captions(images, None, GENERATION_CAP, **case)] == \
            [g.token_ids for g in engines["caption"].generate_captions(images, None, GENERATION_CAP, **case)]


def test_sampling_is_seeded(engines, photos):
    images = varied_images(photos)
    caption = engines["caption"]

    def run(seed, **kw):
        return [g.token_ids for g in caption.generate_captions(images, None, GENERATION_CAP, do_sample=True,
                                                               seed=seed, **kw)]

    assert run(3, temperature=1.5) == run(3, temperature=1.5)
    assert run(3, temperature=1.5) != run(4, temperature=1.5)
    greedy = [g.token_ids for g in caption.generate_captions(images, None, GENERATION_CAP)]
    assert run(5, top_k=1) == greedy
    assert run(6, top_p=0.0) == greedy
    answers = engines["vqa"].answer(images, BLIP_QUESTIONS, GENERATION_CAP, do_sample=True, seed=1, temperature=1.5)
    assert answers == engines["vqa"].answer(images, BLIP_QUESTIONS, GENERATION_CAP, do_sample=True, seed=1,
                                            temperature=1.5)


def test_sampled_frequencies_follow_the_filtered_softmax():
    logits = np.array([[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]], np.float32)
    warped = lp.warp(logits, 1.3, 5, 0.9)  # top-5 keeps 5 tokens, top-p 0.9 drops the tail of those
    expected = lp.softmax(warped)[0]
    assert (expected > 0).sum() == 4 and expected[5:].sum() == 0
    rng = np.random.Generator(np.random.PCG64(1234))
    draws = 20000
    counts = np.bincount(lp.sample(np.repeat(warped, draws, axis=0), rng), minlength=8)
    assert counts[expected == 0].sum() == 0
    kept = expected > 0
    chi2 = (((counts[kept] - draws * expected[kept]) ** 2) / (draws * expected[kept])).sum()
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom, p = 0.001


@pytest.mark.parametrize("t, k, p, m", [(0.7, 10, 0.8, 0.0), (1.0, 0, 1.0, 0.3), (0.7, 10, 0.8, 0.5),
                                        (1.3, 0, 1.0, 1.0)])
def test_warpers_match_transformers(t, k, p, m):
    from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    scores = np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32)
    ref = torch.from_numpy(scores.copy())
    for warper in (TemperatureLogitsWarper(t), TopKLogitsWarper(k) if k else None, TopPLogitsWarper(p),
                   MinPLogitsWarper(m) if m else None):
        ref = ref if warper is None else warper(None, ref)
    ours = lp.warp(scores, t, k, p, m)
    assert np.array_equal(np.isinf(ours), np.isinf(ref.numpy()))
    assert np.isfinite(ours).sum() < scores.size  # each case removes tokens


@pytest.mark.parametrize("option, value", [
    ("num_beams", 0), ("num_beams", 2.5), ("top_p", 1.5), ("top_p", -0.1), ("min_new_tokens", 9),
    ("min_new_tokens", -1), ("seed", 1.5), ("seed", "7"), ("seed", -1), ("early_stopping", "maybe"),
    ("no_repeat_ngram_size", -2), ("top_k", -1), ("repetition_penalty", 0.0), ("length_penalty", float("nan")),
    ("do_sample", "yes"),
])
def test_bad_options_are_refused(engines, photos, option, value):
    with pytest.raises(GenerationConfigError, match=option):
        engines["caption"].generate_captions(photos[:1], None, GENERATION_CAP, **{option: value})
    with pytest.raises(GenerationConfigError, match=option):
        engines["vqa"].answer(photos[:1], "what?", GENERATION_CAP, **{option: value})


def test_temperature_zero_only_refused_when_sampling(engines, photos):
    with pytest.raises(GenerationConfigError, match="temperature"):
        engines["caption"].caption(photos[:1], max_new_tokens=3, do_sample=True, temperature=0)
    with pytest.raises(GenerationConfigError, match="temperature: not read by greedy decoding"):
        engines["caption"].caption(photos[:1], max_new_tokens=3, temperature=0)  # given, it would be ignored
    assert GenerationOptions(temperature=0).mode == "greedy"  # as a checkpoint's config may hold it
    with pytest.raises(GenerationConfigError, match="num_beams"):
        GenerationOptions(num_beams=2, do_sample=True)


class NaNOnce:
    """Wraps the decoder step session: on its first run, row ``row`` of the logits becomes NaN."""

    def __init__(self, session, row):
        self.session, self.row, self.calls = session, row, 0

    def run(self, names, feeds):
        out = self.session.run(names, feeds)
        self.calls += 1
        if self.calls == 1:
            out[0] = out[0].copy()
            out[0][self.row] = np.nan
        return out

    def __getattr__(self, name):
        return getattr(self.session, name)


@pytest.mark.parametrize("case", [dict(num_beams=3), dict(do_sample=True, seed=0)], ids=case_id)
def test_nan_logits_stop_that_item_only(blip_caption, photos, case):
    from clipblip.errors import NumericalError, PartialFailure

    engine = BlipEngine.from_dir(blip_caption.exported, provider="cpu", threads=2)
    images = varied_images(photos)
    clean = engine.generate_captions(images, None, GENERATION_CAP, **case)
    engine.decoder.step_session = NaNOnce(engine.decoder.step_session, 2)  # item 2's prompt step
    with pytest.raises(PartialFailure) as caught:
        engine.generate_captions(images, None, GENERATION_CAP, **case)
    errors, results = caught.value.errors, caught.value.results
    assert list(errors) == [2] and isinstance(errors[2], NumericalError)
    if "num_beams" in case:  # sampling draws change once a row leaves, beams do not
        assert [results[i].token_ids for i in (0, 1, 3)] == [clean[i].token_ids for i in (0, 1, 3)]
