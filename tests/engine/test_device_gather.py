"""The IO-binding decoder keeps its work on the device: beam search reorders and drops cache rows there
(only each step's logits come back), greedy decoding takes the argmax there (only token ids and a
finiteness flag per row come back), and the shipped helper graphs are the ones clipblip.export.kernels
builds. Run here on the CPU provider (device "cpu"), which takes the same IO-binding code path as CUDA."""

import numpy as np
import onnxruntime as ort
import pytest

from clipblip.engine import BlipEngine
from clipblip.engine.decoder import ARGMAX_ROWS, GATHER_ROWS
from clipblip.errors import NumericalError, PartialFailure
from clipblip.export.kernels import argmax_rows_graph, gather_rows_graph
from tests.helpers import GENERATION_CAP, varied_images


def test_the_shipped_gather_graph_is_the_generated_one():
    assert GATHER_ROWS.read_bytes() == gather_rows_graph().SerializeToString()


def test_the_shipped_argmax_graph_is_the_generated_one():
    assert ARGMAX_ROWS.read_bytes() == argmax_rows_graph().SerializeToString()


@pytest.fixture
def brought_back(monkeypatch):
    """The shapes of every array that an OrtValue hands to the host from now on."""
    shapes = []
    real = ort.OrtValue.numpy

    def numpy(self):
        array = real(self)
        shapes.append(array.shape)
        return array

    monkeypatch.setattr(ort.OrtValue, "numpy", numpy)
    return shapes


def test_beam_search_on_the_device_path_keeps_the_cache_on_the_device(blip_caption, photos, brought_back):
    host = BlipEngine.from_dir(blip_caption.exported, io_binding=False)
    device = BlipEngine.from_dir(blip_caption.exported, io_binding=True)
    images = varied_images(photos)
    expected = host.generate_captions(images, max_new_tokens=6, num_beams=3)
    got = device.generate_captions(images, max_new_tokens=6, num_beams=3)
    assert [g.token_ids for g in got] == [g.token_ids for g in expected]
    assert brought_back and all(len(shape) == 2 for shape in brought_back)  # logits (rows, vocab) only

    rows = np.array([2, 0, 0, 1], dtype=np.int64)
    data = np.random.default_rng(0).random((3, 2, 5, 4), dtype=np.float32)
    moved = device.decoder.gather([ort.OrtValue.ortvalue_from_numpy(data)], rows)[0]
    brought_back.clear()
    np.testing.assert_array_equal(moved.numpy(), data[rows])


def test_the_argmax_graph_takes_the_first_maximum_and_flags_non_finite_rows():
    session = ort.InferenceSession(str(ARGMAX_ROWS), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    ties = rng.integers(0, 3, (64, 37)).astype(np.float32)  # many ties at the maximum
    ties[5] = 7.0  # a row that is all one value
    ties[6, [3, 30]] = 1e30
    ties[7] = -1e30
    normal = rng.standard_normal((3, 30524)).astype(np.float32)  # BERT's vocabulary size
    wide_ties = rng.integers(-2, 3, (4, 30524)).astype(np.float32) * 0.5
    wide_ties[0, -1] = 9.0  # a maximum in the last position
    for logits in (ties, normal, wide_ties):
        ids, finite = session.run(["ids", "finite"], {"logits": logits})
        assert ids.dtype == np.int64 and finite.dtype == np.bool_
        np.testing.assert_array_equal(ids, logits.argmax(axis=-1))
        assert finite.all()
    broken = ties.copy()
    broken[1, 4], broken[2, 0], broken[3, 36], broken[4] = np.nan, np.inf, -np.inf, np.nan
    ids, finite = session.run(["ids", "finite"], {"logits": broken})
    np.testing.assert_array_equal(finite, np.isfinite(broken).all(axis=-1))
    np.testing.assert_array_equal(ids[finite], broken[finite].argmax(axis=-1))
    ids, finite = session.run(["ids", "finite"], {"logits": np.zeros((0, 37), np.float32)})
    assert ids.shape == finite.shape == (0,)


@pytest.mark.parametrize("prompt", [None, "a picture of"])
def test_greedy_on_the_device_path_brings_back_only_token_ids(blip_caption, photos, brought_back, prompt):
    host = BlipEngine.from_dir(blip_caption.exported, provider="cpu", io_binding=False)
    device = BlipEngine.from_dir(blip_caption.exported, provider="cpu", io_binding=True)
    assert device.decoder.device_argmax and not hasattr(host.decoder, "step_argmax")
    images = varied_images(photos)  # rows that end at different steps: rows leave the batch on the device
    expected = host.generate_captions(images, prompt, GENERATION_CAP)
    assert len({len(g.token_ids) for g in expected}) >= 2
    brought_back.clear()
    got = device.generate_captions(images, prompt, GENERATION_CAP)
    assert [g.token_ids for g in got] == [g.token_ids for g in expected]
    assert brought_back and all(len(shape) == 1 for shape in brought_back)  # ids and finite (rows,) only
    assert max(shape[0] for shape in brought_back) == len(images)


@pytest.mark.parametrize("case", [dict(repetition_penalty=1.3), dict(no_repeat_ngram_size=2),
                                  dict(min_new_tokens=4)])
def test_greedy_with_a_logits_processor_takes_the_logits_to_the_host(blip_caption, photos, brought_back, case):
    host = BlipEngine.from_dir(blip_caption.exported, provider="cpu", io_binding=False)
    device = BlipEngine.from_dir(blip_caption.exported, provider="cpu", io_binding=True)
    images = varied_images(photos)
    expected = host.generate_captions(images, None, GENERATION_CAP, **case)
    brought_back.clear()
    got = device.generate_captions(images, None, GENERATION_CAP, **case)
    assert [g.token_ids for g in got] == [g.token_ids for g in expected]
    assert brought_back and all(len(shape) == 2 for shape in brought_back)  # the processors need the logits


def test_nan_logits_on_the_device_path_stop_that_item_only(blip_caption, photos):
    device = BlipEngine.from_dir(blip_caption.exported, provider="cpu", io_binding=True)
    images = varied_images(photos)
    clean = device.generate_captions(images, None, GENERATION_CAP)
    decoder = device.decoder
    real_run_step, calls = decoder._run_step, []

    def nan_once(input_ids, past, cross, logits_on):
        outputs = real_run_step(input_ids, past, cross, logits_on)
        calls.append(logits_on)
        if len(calls) == 1:  # item 2's logits of the prompt step become NaN, in place on the device
            logits = ort.OrtValue.numpy(outputs[0]).copy()
            logits[2] = np.nan
            outputs[0].update_inplace(logits)
        return outputs

    def host_step(*args):
        raise AssertionError("greedy decoding without processors brought the logits to the host")

    decoder._run_step, decoder.step = nan_once, host_step
    with pytest.raises(PartialFailure) as caught:
        device.generate_captions(images, None, GENERATION_CAP)
    assert calls
    errors, results = caught.value.errors, caught.value.results
    assert list(errors) == [2] and isinstance(errors[2], NumericalError)
    assert [results[i].token_ids for i in (0, 1, 3)] == [clean[i].token_ids for i in (0, 1, 3)]
