"""Property-based fuzzing of the image and text entry points (Hypothesis).

Bounded in the suite; CLIPBLIP_FUZZ_EXAMPLES=5000 make test runs it longer.
"""

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clipblip.engine import ClipEngine
from clipblip.errors import ImageError

EXAMPLES = int(os.environ.get("CLIPBLIP_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("CLIPBLIP_FUZZ_EXAMPLES"),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def engine(tiny_clip):
    return ClipEngine.from_dir(tiny_clip.exported)


@pytest.fixture(scope="module")
def seed_files(photos):
    """Real encoded images to mutate: PNG, JPEG, GIF bytes."""
    base = Image.open(photos[0]).convert("RGB").resize((24, 20))
    blobs = []
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        buffer = io.BytesIO()
        base.save(buffer, format=fmt)
        blobs.append(buffer.getvalue())
    return blobs


@FUZZ
@given(texts=st.lists(st.text(max_size=300), min_size=1, max_size=4))
def test_any_text_embeds_to_unit_vectors(engine, texts):
    embeddings = engine.embed_texts(texts)
    assert np.isfinite(embeddings).all()
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)


@FUZZ
@given(data=st.data())
def test_mutated_image_files_give_a_result_or_an_image_error(engine, seed_files, tmp_path_factory, data):
    blob = bytearray(data.draw(st.sampled_from(seed_files)))
    for _ in range(data.draw(st.integers(0, 8))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    path = tmp_path_factory.mktemp("fuzz") / "image.bin"
    path.write_bytes(bytes(blob[:cut]))
    try:
        embedding = engine.embed_images([path])
    except ImageError as e:
        assert "image.bin" in str(e)
    else:
        assert np.isfinite(embedding).all()


@FUZZ
@given(shape=st.sampled_from([(1, 1), (3, 5, 3), (7, 2, 4), (40, 1, 1), (2, 9)]),
       dtype=st.sampled_from([np.uint8, np.float32, np.int64, np.bool_]), data=st.data())
def test_arrays_give_a_result_or_an_image_error(engine, shape, dtype, data):
    array = np.asarray(data.draw(st.lists(st.integers(0, 255), min_size=int(np.prod(shape)),
                                          max_size=int(np.prod(shape))))).reshape(shape).astype(dtype)
    try:
        embedding = engine.embed_images([array])
    except ImageError as e:
        assert "array" in str(e)
    else:
        assert dtype == np.uint8 and np.isfinite(embedding).all()
