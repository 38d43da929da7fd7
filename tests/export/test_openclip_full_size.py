"""Each OpenCLIP preset at full size (random weights, seed 0): exported fp32, the engine gives open_clip's own
embeddings of the same random model, built by open_clip from the same config. Slow: minutes per architecture."""

import numpy as np
import pytest
from PIL import Image

from clipblip.engine import OpenClipEngine
from clipblip.families import family
from tests.helpers import TEXTS

pytest.importorskip("open_clip", reason="open_clip and timm (the `open_clip` extra) are not installed")

PRESETS = [p.name for p in family("open_clip").presets]


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_full_size_preset_gives_open_clips_embeddings(preset, photos, odd_images, tmp_path):
    import torch

    from clipblip.export import export_model
    from clipblip.export.openclip import import_open_clip, write_config

    arch = family("open_clip").presets[PRESETS.index(preset)].config["architecture"]
    export_model("random:" + preset, tmp_path / "out", threads=2)
    open_clip = import_open_clip()
    config = tmp_path / "config"
    config.mkdir()
    write_config(open_clip, arch, config)
    torch.manual_seed(0)  # as build_random: the same random weights, unfolded
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(config), pretrained_text=False)
    tokenizer = open_clip.get_tokenizer("local-dir:" + str(config))
    model.eval()
    engine = OpenClipEngine.from_dir(tmp_path / "out", provider="cpu")
    assert engine.manifest.random_weights
    images = list(photos) + [odd_images["rgba.png"], odd_images["grey.png"]]
    with torch.no_grad():
        want = model.encode_image(torch.stack([preprocess(Image.open(p)) for p in images]), normalize=True).numpy()
        texts = want_texts = model.encode_text(tokenizer(TEXTS), normalize=True).numpy()
    assert np.abs(engine.embed_images(images) - want).max() < 1e-4
    assert np.abs(engine.embed_texts(TEXTS) - want_texts).max() < 1e-4, texts.shape
