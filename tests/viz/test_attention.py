import numpy as np
import pytest
import torch

from clipblip.engine import BlipEngine, ClipEngine
from clipblip.errors import UsageError
from clipblip.viz import (attention_rollout, class_token_map, cross_attention_figure, image_attention_figure,
                          token_attention_figure)
from tests.helpers import varied_images


def test_clip_attentions_match_transformers(clip_with_attentions, photos):
    engine = ClipEngine.from_dir(clip_with_attentions.exported)
    model, processor = clip_with_attentions.model, clip_with_attentions.processor
    pixel_values = processor.image_processor(images=[varied_images(photos)[0]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = model.vision_model(pixel_values=pixel_values, output_attentions=True).attentions
    got = engine.image_attentions(varied_images(photos)[0])
    assert got.shape == (len(ref),) + tuple(ref[0].shape[1:])
    assert np.abs(got - torch.stack(ref)[:, 0].numpy()).max() < 1e-4

    tokens, got = engine.text_attentions("a photo of a cat")
    ids = processor.tokenizer(["a photo of a cat"], return_tensors="pt")
    with torch.no_grad():
        ref = model.text_model(**ids, output_attentions=True).attentions
    assert tokens == ["<|startoftext|>", "a", "photo", "of", "a", "cat", "<|endoftext|>"]
    assert np.abs(got - torch.stack(ref)[:, 0].numpy()).max() < 1e-4
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)


def test_blip_attentions_match_transformers(blip_caption_with_attentions, photos):
    engine = BlipEngine.from_dir(blip_caption_with_attentions.exported)
    model, processor = blip_caption_with_attentions.model, blip_caption_with_attentions.processor
    image = varied_images(photos)[0]
    pixel_values = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    explained = engine.caption_attentions(image, max_new_tokens=6)
    sequence = explained.generation.prompt_ids + explained.generation.token_ids
    with torch.no_grad():
        vision = model.vision_model(pixel_values=pixel_values, output_attentions=True)
        decoder = model.text_decoder(input_ids=torch.tensor([sequence[:-1]]), output_attentions=True,
                                     encoder_hidden_states=vision.last_hidden_state)
    assert np.abs(engine.image_attentions(image) - torch.stack(vision.attentions)[:, 0].numpy()).max() < 1e-4
    assert np.abs(explained.self_attention - torch.stack(decoder.attentions)[:, 0].numpy()).max() < 1e-4
    assert np.abs(explained.cross_attention - torch.stack(decoder.cross_attentions)[:, 0].numpy()).max() < 1e-4
    assert explained.cross_attention.shape[2] == len(explained.words) == len(explained.generation.token_ids)


def test_attention_outputs_do_not_change_generation(blip_caption, blip_caption_with_attentions, photos):
    images = varied_images(photos)
    lean = BlipEngine.from_dir(blip_caption.exported).generate_captions(images, max_new_tokens=8)
    full = BlipEngine.from_dir(blip_caption_with_attentions.exported).generate_captions(images, max_new_tokens=8)
    assert [g.token_ids for g in lean] == [g.token_ids for g in full]


def test_rollout_and_class_maps_are_normalised():
    rng = np.random.default_rng(0)
    weights = rng.random((3, 2, 10, 10))
    weights /= weights.sum(-1, keepdims=True)
    rollout = attention_rollout(weights)
    np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-12)
    heat = class_token_map(rollout, (3, 3))
    assert heat.shape == (3, 3) and abs(heat.sum() - 1) < 1e-12
    # one layer of uniform attention: rollout = half identity, half uniform
    uniform = np.full((1, 1, 4, 4), 0.25)
    np.testing.assert_allclose(attention_rollout(uniform), 0.5 * np.eye(4) + 0.125)


def test_image_figure_overlays_every_layer_and_the_rollout(clip_with_attentions, photos):
    engine = ClipEngine.from_dir(clip_with_attentions.exported)
    view = engine.preprocess.view(photos[0])
    weights = engine.image_attentions(photos[0])
    fig = image_attention_figure(view, weights, engine.manifest.model["patch_grid"])
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled[1:]] == [f"layer {l}" for l in range(len(weights))] + ["rollout"]
    overlay = titled[-1].images[1]
    assert overlay.get_extent() == [0, view.shape[1], view.shape[0], 0]  # upsampled to the image
    heat = np.asarray(overlay.get_array())
    assert heat.shape == tuple(engine.manifest.model["patch_grid"]) and heat.max() == pytest.approx(1.0)
    single = image_attention_figure(view, weights, engine.manifest.model["patch_grid"], layer=1, head=0)
    assert [ax.get_title() for ax in single.axes if ax.images][1] == "layer 1, head 0"
    with pytest.raises(UsageError, match="layer 9"):
        image_attention_figure(view, weights, engine.manifest.model["patch_grid"], layer=9)


def test_token_and_cross_attention_figures(blip_caption_with_attentions, photos):
    engine = BlipEngine.from_dir(blip_caption_with_attentions.exported)
    explained = engine.caption_attentions(photos[0], max_new_tokens=5)
    fig = token_attention_figure(explained.self_attention, explained.tokens, layer=0, head="mean")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == explained.tokens
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()).sum(-1), 1.0, atol=1e-5)
    grid = token_attention_figure(explained.self_attention, explained.tokens)
    layers, heads = explained.self_attention.shape[:2]
    assert len(grid.axes) == layers * (heads + 1)
    strip = cross_attention_figure(engine.preprocess.view(photos[0]), explained.words, explained.cross_attention,
                                   engine.manifest.model["patch_grid"], caption=explained.generation.text)
    assert [ax.get_title() for ax in strip.axes if ax.images] == [repr(w) for w in explained.words]


def test_lean_exports_say_how_to_get_attentions(tiny_clip, photos):
    with pytest.raises(UsageError, match="--attentions"):
        ClipEngine.from_dir(tiny_clip.exported).image_attentions(photos[0])
