import numpy as np
from PIL import Image

from clipblip.engine import ImagePreprocessor
from clipblip.manifest import Manifest
from tests.helpers import assert_pixels_match


def test_pixels_match_the_transformers_processor(tiny_clip, photos, odd_images):
    assert_pixels_match(tiny_clip.exported, tiny_clip.processor.image_processor, photos + list(odd_images.values()))


def test_arrays_are_read_as_rgb(tiny_clip, photos):
    preprocess = ImagePreprocessor.from_manifest(Manifest.load(tiny_clip.exported).image)
    rgb = np.asarray(Image.open(photos[0]).convert("RGB"))
    np.testing.assert_array_equal(preprocess([rgb]), preprocess([photos[0]]))
    grey = rgb[..., 0]
    assert preprocess([grey]).shape == preprocess([rgb]).shape
