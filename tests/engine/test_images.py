import numpy as np
from PIL import Image

from clipblip.engine import ImagePreprocessor
from clipblip.manifest import Manifest


def test_pixels_match_the_transformers_processor(tiny_clip, photos, odd_images):
    preprocess = ImagePreprocessor.from_manifest(Manifest.load(tiny_clip.exported).image)
    for path in photos + list(odd_images.values()):
        with Image.open(path) as image:
            ref = tiny_clip.processor.image_processor(images=image, return_tensors="np")["pixel_values"][0]
            got = preprocess([image])[0]
        assert got.shape == ref.shape, path.name
        assert np.abs(got - ref).max() <= 1e-5, path.name


def test_arrays_are_read_as_rgb(tiny_clip, photos):
    preprocess = ImagePreprocessor.from_manifest(Manifest.load(tiny_clip.exported).image)
    rgb = np.asarray(Image.open(photos[0]).convert("RGB"))
    np.testing.assert_array_equal(preprocess([rgb]), preprocess([photos[0]]))
    grey = rgb[..., 0]
    assert preprocess([grey]).shape == preprocess([rgb]).shape
