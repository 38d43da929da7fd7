"""The calibration set every int8 benchmark shares: 96 images (seeded crops, flips and rescales of the two photos
matplotlib ships) and 96 texts (captions as people write them, zero-shot prompts as CLIP's templates make them), as a
folder that `clipblip export --calibration` and NNCF both read."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from common import PHOTOS, sample_image, say

__all__ = ["CALIBRATION_ITEMS", "CALIBRATION_TEXTS", "calibration_folder"]

CALIBRATION_ITEMS = 96

# The texts NNCF calibrates the text tower on (and clipblip's int8 export, from the same folder): captions as people
# write them and zero-shot prompts as CLIP's templates make them.
CALIBRATION_TEXTS = (
    "a dog running on the beach", "two cats sleeping on a sofa", "a red car parked on a city street",
    "a woman in a navy uniform smiling", "a portrait of an older woman with short hair",
    "a blue box of tea on a white table", "a plate of pasta with tomato sauce", "a man riding a bicycle across a bridge",
    "children playing football in a park", "a bowl of fresh fruit on a kitchen counter",
    "a snowy mountain under a clear sky", "a sailboat on a calm lake at sunset",
    "an old brick building with tall windows", "a close-up of a yellow flower", "a train arriving at a crowded station",
    "a laptop and a cup of coffee on a desk", "a black and white photo of a city skyline",
    "a horse grazing in a green field", "a group of people hiking up a hill", "a cake with lit candles on a table",
    "a stack of books next to a lamp", "an airplane flying above the clouds", "a fisherman standing on a wooden pier",
    "a bird perched on a tree branch", "a busy market with fruit stalls", "a child holding a red balloon",
    "a kitchen with white cabinets and a wooden floor", "a motorcycle parked in front of a cafe",
    "a lighthouse on a rocky coast", "a pizza with mushrooms and olives", "a tennis player serving the ball",
    "a cat looking out of a window", "a bus driving down a rainy street", "a pair of shoes on a doormat",
    "a bridge lit up at night", "a herd of cows crossing a road", "a teddy bear sitting on a bed",
    "a man in a suit talking on a phone", "an empty classroom with wooden desks", "a surfer riding a large wave",
    "a bottle of wine and two glasses", "a garden with roses and a stone path", "a dog catching a frisbee in the air",
    "a vintage camera on a shelf", "a street sign at an intersection", "a boat tied to a dock in the harbour",
    "a clock tower in a town square", "a woman reading a newspaper on a bench",
    "a photo of a dog.", "a photo of a cat.", "a photo of a car.", "a photo of a bird.", "a photo of a person.",
    "a photo of a box.", "a photo of a flower.", "a photo of a train.", "a photo of a boat.", "a photo of a pizza.",
    "a blurry photo of a truck.", "a close-up photo of a spoon.", "a black and white photo of a horse.",
    "a drawing of a house.", "a painting of a tree.", "a cropped photo of a chair.", "a bright photo of a bicycle.",
    "a dark photo of a lamp.", "a photo of the large airplane.", "a photo of a small mouse.", "an origami swan.",
    "a sketch of a guitar.", "a low resolution photo of a clock.", "a photo of many apples.",
    "a jpeg corrupted photo of a bottle.", "a rendering of a robot.", "a tattoo of a rose.",
    "a photo of a hard to see phone.", "itap of a camera.", "a good photo of a keyboard.", "a bad photo of a chair.",
    "a photo of one sandwich.", "the cartoon elephant.", "art of a lion.", "a plastic toy car.", "a photo of my dog.",
    "a photo of a clean kitchen.", "a photo of a dirty window.", "a photo of the cool motorcycle.",
    "a pixelated photo of a tiger.", "a sculpture of a woman.", "an embroidered owl.", "a photo of a weird fish.",
    "a photo of a nice sofa.", "a photo of an umbrella.", "a photo of a uniform.", "a photo of a tea box.",
    "a photo of a grey-haired woman.",
)
assert len(CALIBRATION_TEXTS) == CALIBRATION_ITEMS


def calibration_folder(folder: Path) -> Path:
    """``folder``: 96 images (seeded crops, flips and rescales of the two photos of common.PHOTOS, JPEG) and
    texts.txt (:data:`CALIBRATION_TEXTS`), made unless it holds them already. The same for NNCF and clipblip."""
    texts = "\n".join(CALIBRATION_TEXTS) + "\n"
    images = folder / "images"
    if (folder / "texts.txt").is_file() and (folder / "texts.txt").read_text(encoding="utf-8") == texts \
            and len(list(images.glob("*.jpg"))) == CALIBRATION_ITEMS:
        return folder
    from PIL import Image

    say(f"writing the calibration set ({CALIBRATION_ITEMS} images, {CALIBRATION_ITEMS} texts) to {folder}")
    shutil.rmtree(folder, ignore_errors=True)
    images.mkdir(parents=True)
    photos = [sample_image(name) for name in PHOTOS]
    rng = random.Random(0)
    for i in range(CALIBRATION_ITEMS):
        photo = photos[i % len(photos)]
        width, height = photo.size
        area = rng.uniform(0.3, 1.0) * width * height  # a crop of 30-100 % of the photo, aspect 3:4 to 4:3
        aspect = rng.uniform(3 / 4, 4 / 3)
        w, h = min(width, round((area * aspect) ** 0.5)), min(height, round((area / aspect) ** 0.5))
        left, top = rng.randint(0, width - w), rng.randint(0, height - h)
        image = photo.crop((left, top, left + w, top + h))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        short = rng.randint(160, 640)  # rescaled: the short side 160-640 px
        scale = short / min(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
        image.save(images / f"{i:03d}.jpg", quality=92)
    (folder / "texts.txt").write_text(texts, encoding="utf-8")
    return folder
