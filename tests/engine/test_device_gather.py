"""The IO-binding decoder reorders and drops cache rows on the device: beam search never brings the
KV cache back to the host (only each step's logits come back), and the shipped Gather graph is the one
clipblip.export.kernels builds."""

import numpy as np
import onnxruntime as ort

from clipblip.engine import BlipEngine
from clipblip.engine.decoder import GATHER_ROWS
from clipblip.export.kernels import gather_rows_graph
from tests.helpers import varied_images


def test_the_shipped_gather_graph_is_the_generated_one():
    assert GATHER_ROWS.read_bytes() == gather_rows_graph().SerializeToString()


def test_beam_search_on_the_device_path_keeps_the_cache_on_the_device(blip_caption, photos, monkeypatch):
    host = BlipEngine.from_dir(blip_caption.exported, io_binding=False)
    device = BlipEngine.from_dir(blip_caption.exported, io_binding=True)
    images = varied_images(photos)
    expected = host.generate_captions(images, max_new_tokens=6, num_beams=3)
    brought_back = []
    real = ort.OrtValue.numpy

    def numpy(self):
        array = real(self)
        brought_back.append(array.shape)
        return array

    monkeypatch.setattr(ort.OrtValue, "numpy", numpy)
    got = device.generate_captions(images, max_new_tokens=6, num_beams=3)
    assert [g.token_ids for g in got] == [g.token_ids for g in expected]
    assert brought_back and all(len(shape) == 2 for shape in brought_back)  # logits (rows, vocab) only

    rows = np.array([2, 0, 0, 1], dtype=np.int64)
    data = np.random.default_rng(0).random((3, 2, 5, 4), dtype=np.float32)
    moved = device.decoder.gather([ort.OrtValue.ortvalue_from_numpy(data)], rows)[0]
    np.testing.assert_array_equal(real(moved), data[rows])
