"""Providers, threads, memory over time, and NaN/Inf: the engine under deployment conditions."""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from clipblip.engine import BlipEngine, ClipEngine, session
from clipblip.engine.decoder import HostDecoder
from clipblip.engine.generate import greedy_decode
from clipblip.errors import NumericalError, PartialFailure, ProviderError
from tests.helpers import TEXTS, varied_images


def test_two_onnx_runtimes_installed_are_reported(monkeypatch, tiny_clip):
    versions = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}

    def version(name):
        if name in versions:
            return versions[name]
        raise session.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(session.metadata, "version", version)
    with pytest.raises(ProviderError, match="onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1 are installed together"):
        ClipEngine.from_dir(tiny_clip.exported, provider="cuda")
    with pytest.warns(RuntimeWarning, match="installed together"):
        ClipEngine.from_dir(tiny_clip.exported, provider="cpu")


def test_one_engine_shared_by_eight_threads(blip_caption, tiny_clip, photos):
    clip = ClipEngine.from_dir(tiny_clip.exported, threads=1)
    blip = BlipEngine.from_dir(blip_caption.exported, threads=1)
    images = varied_images(photos)
    jobs = [(i % 4, TEXTS[i % len(TEXTS)]) for i in range(48)]
    expected_images = {i: clip.embed_images([images[i]]) for i in range(4)}
    expected_texts = {t: clip.embed_texts([t]) for t in TEXTS}
    expected_captions = {i: blip.caption([images[i]], max_new_tokens=6) for i in range(4)}

    def work(job):
        i, text = job
        return (clip.embed_images([images[i]]), clip.embed_texts([text]), blip.caption([images[i]], max_new_tokens=6))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, jobs, timeout=300))
    for (i, text), (image, embedded, caption) in zip(jobs, results):
        np.testing.assert_array_equal(image, expected_images[i])
        np.testing.assert_array_equal(embedded, expected_texts[text])
        assert caption == expected_captions[i]


def resident_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def soak(engine, images, calls: int, keep: list | None = None) -> float:
    """Growth of resident memory (MB) between the end of a warm-up and the end of ``calls`` calls."""
    rng = np.random.default_rng(0)
    words = "a photo of the cat dog house 猫 🐱 tree".split()
    baseline = None
    for call in range(calls):
        if call == calls // 4:
            baseline = resident_mb()
        texts = [" ".join(rng.choice(words, rng.integers(0, 90))) for _ in range(rng.integers(1, 9))]
        out = engine.embed_texts(texts)
        if call % 10 == 0:
            out = engine.embed_images([images[rng.integers(0, len(images))]] * int(rng.integers(1, 5)))
        if keep is not None:
            keep.append(np.ones(50_000) + out.sum())  # a leak of ~0.4 MB a call
    return resident_mb() - baseline


SOAK_CALLS = int(os.environ.get("CLIPBLIP_SOAK_CALLS", "2000"))
GROWTH_LIMIT_MB = 40


@pytest.mark.slow  # 2,000 calls; its leak control below goes with it
def test_memory_levels_off_under_a_soak(tiny_clip, photos):
    engine = ClipEngine.from_dir(tiny_clip.exported)
    images = varied_images(photos)
    assert soak(engine, images, SOAK_CALLS) < GROWTH_LIMIT_MB


@pytest.mark.slow
def test_the_soak_check_catches_a_leak(tiny_clip, photos):
    engine = ClipEngine.from_dir(tiny_clip.exported)
    leak: list = []
    assert soak(engine, varied_images(photos), 400, keep=leak) > GROWTH_LIMIT_MB


class NaNRows:
    """Wraps a session so that chosen batch rows of its first output become NaN."""

    def __init__(self, session, rows):
        self.session, self.rows = session, rows

    def run(self, names, feeds):
        out = self.session.run(names, feeds)
        out[0] = out[0].copy()
        out[0][[r for r in self.rows if r < len(out[0])]] = np.nan
        return out

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_nan_embeddings_are_numerical_errors_for_that_item(tiny_clip, photos):
    engine = ClipEngine.from_dir(tiny_clip.exported)
    engine.sessions["image_tower"] = NaNRows(engine.sessions["image_tower"], [1])
    with pytest.raises(PartialFailure) as caught:
        engine.embed_images(varied_images(photos)[:3])
    assert list(caught.value.errors) == [1] and isinstance(caught.value.errors[1], NumericalError)
    assert np.isfinite(caught.value.results[[0, 2]]).all()


def test_nan_logits_stop_that_row_and_are_reported(blip_caption, photos):
    engine = BlipEngine.from_dir(blip_caption.exported)
    images = varied_images(photos)
    clean = engine.generate_captions(images, max_new_tokens=6)
    engine.decoder.step_session = NaNRows(engine.decoder.step_session, [2])
    with pytest.raises(PartialFailure) as caught:
        engine.generate_captions(images, max_new_tokens=6)
    errors, results = caught.value.errors, caught.value.results
    assert isinstance(errors.get(2), NumericalError) and "logits" in str(errors[2])
    for i in (0, 1, 3):  # the other rows are untouched (row 2 leaving the batch changes nothing for them)
        if i not in errors:
            assert results[i].token_ids == clean[i].token_ids


def test_greedy_loop_never_emits_a_token_from_broken_logits():
    class Fake(HostDecoder):
        def __init__(self):
            pass

        def empty_cache(self, batch):
            return [np.zeros((batch, 1, 0, 1), np.float32)]

        def step(self, input_ids, past, cross):
            logits = np.zeros((len(input_ids), 5), np.float32)
            logits[:, 3] = 1
            logits[input_ids[:, -1] == 3] = np.inf  # the row that produced token 3 breaks next step
            return logits, [np.concatenate([past[0], np.zeros((len(input_ids), 1, 1, 1), np.float32)], 2)]

    out, broken = greedy_decode(Fake(), np.array([[0], [3]]), [np.zeros((2, 1, 1, 1), np.float32)],
                                max_new_tokens=4, eos_id=4, pad_id=0)
    assert broken.tolist() == [True, True]
    assert out.tolist() == [[3, 0, 0, 0], [0, 0, 0, 0]]


def test_one_lazily_opened_image_twice_in_a_batch_answers_as_alone(tiny_clip, photos):
    from PIL import Image

    engine = ClipEngine.from_dir(tiny_clip.exported)
    lazy = Image.open(photos[0])  # not loaded yet: loading it from two threads at once would break it
    rows = engine.embed_images([lazy, photos[0], lazy, photos[0].read_bytes()])
    np.testing.assert_allclose(rows, np.repeat(engine.embed_images([photos[0]]), 4, axis=0), atol=1e-6)
