"""Odd, broken and hostile images: a clear error naming the file, or a valid result."""

import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from clipblip.engine import ClipEngine
from clipblip.errors import ImageError, ImageTooLargeError, PartialFailure


@pytest.fixture(scope="module")
def engine(tiny_clip):
    return ClipEngine.from_dir(tiny_clip.exported)


def png_header_only(path, width, height):
    """A PNG whose header announces width x height; decoding it would need width*height*3 bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def write_bombs(folder):
    bomb = png_header_only(folder / "bomb.png", 10_000, 10_000)  # 100 megapixels in a tiny file
    huge = png_header_only(folder / "huge.png", 100_000, 100_000)  # past Pillow's own guard too
    return bomb, huge


def test_decompression_bomb_is_refused_before_decoding(engine, tmp_path, monkeypatch):
    bomb, huge = write_bombs(tmp_path)

    def no_decoding(image):
        raise AssertionError(f"{image.filename} was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)  # reading the header alone must settle it
    with pytest.raises(ImageTooLargeError, match=r"bomb.png: 10000x10000 = 100,000,000 pixels .* limit of 64,000"):
        engine.embed_images([bomb])
    with pytest.raises(ImageTooLargeError, match="huge.png"):
        engine.embed_images([huge])


@pytest.mark.slow  # a wall-clock bound: only a guard against a hang, so generous, and kept out of `make test`
def test_refusing_a_bomb_takes_no_time(engine, tmp_path):
    bomb, huge = write_bombs(tmp_path)
    start = time.perf_counter()
    for path in (bomb, huge):
        with pytest.raises(ImageTooLargeError):
            engine.embed_images([path])
    assert time.perf_counter() - start < 60


def test_the_pixel_limit_is_configurable(tiny_clip, photos):
    small = ClipEngine.from_dir(tiny_clip.exported, max_image_pixels=10_000)
    with pytest.raises(ImageTooLargeError, match="grace_hopper.jpg.*over the limit of 10,000"):
        small.embed_images([photos[0]])
    unlimited = ClipEngine.from_dir(tiny_clip.exported, max_image_pixels=None)
    assert np.isfinite(unlimited.embed_images([photos[0]])).all()


@pytest.mark.parametrize("name, content, message", [
    ("truncated.jpg", None, "cannot decode"),
    ("notes.jpg", b"this is text, not a JPEG", "not a readable image"),
    ("empty.png", b"", "not a readable image"),
])
def test_broken_files_name_themselves(engine, tmp_path, photos, name, content, message):
    path = tmp_path / name
    path.write_bytes(photos[0].read_bytes()[:3000] if content is None else content)
    with pytest.raises(ImageError, match=f"{name}: {message}"):
        engine.embed_images([path])


def test_directories_and_missing_paths(engine, tmp_path):
    with pytest.raises(ImageError, match="is a directory"):
        engine.embed_images([tmp_path])
    with pytest.raises(ImageError, match="absent.png: no such file"):
        engine.embed_images([tmp_path / "absent.png"])
    with pytest.raises(ImageError, match="arrays must be uint8"):
        engine.embed_images([np.zeros((4, 4, 3), dtype=np.float64)])
    with pytest.raises(ImageError, match="must be a path"):
        engine.embed_images([42])


def unusual_images(tmp_path, photos):
    base = Image.open(photos[0]).convert("RGB").resize((60, 50))
    rng = np.random.default_rng(0)
    paths = {}

    def save(name, image, **kw):
        image.save(tmp_path / name, **kw)
        paths[name] = tmp_path / name

    save("sixteen_bit.png", Image.fromarray(rng.integers(0, 65535, (40, 30), dtype=np.uint16)))
    save("float.tiff", Image.fromarray(rng.random((40, 30)).astype(np.float32)))
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    save("palette_transparent.png", palette, transparency=0)
    save("la.png", base.convert("LA"))
    save("cmyk.jpg", base.convert("CMYK"))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    save("rotated.jpg", base, exif=exif)
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "green", "blue")]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    paths["animated.gif"] = tmp_path / "animated.gif"
    save("one_by_one.png", Image.new("RGB", (1, 1), (10, 200, 30)))
    save("one_by_10000.png", Image.fromarray(rng.integers(0, 255, (1, 10000, 3), dtype=np.uint8)))
    return paths


def test_unusual_images_give_valid_results(engine, tmp_path, photos):
    paths = unusual_images(tmp_path, photos)
    embeddings = engine.embed_images(list(paths.values()))
    assert np.isfinite(embeddings).all()
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    red = engine.embed_images([Image.new("RGB", (20, 20), "red")])[0]
    assert np.allclose(embeddings[list(paths).index("animated.gif")], red, atol=1e-6)  # the first frame


def test_one_bad_image_does_not_spoil_the_batch(engine, tmp_path, photos):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(PartialFailure, match="1 of 3 items failed") as caught:
        engine.embed_images([photos[0], bad, photos[1]])
    error = caught.value
    assert list(error.errors) == [1] and "bad.jpg" in str(error.errors[1])
    good = engine.embed_images(photos)
    np.testing.assert_allclose(error.results[[0, 2]], good, atol=1e-6)
    assert np.isnan(error.results[1]).all()
    with pytest.raises(PartialFailure) as caught:
        engine.classify([bad, photos[0]], ["cat", "dog"])
    assert caught.value.results[0] is None and caught.value.results[1][0][0] in ("cat", "dog")
