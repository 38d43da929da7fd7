import pytest
import torch

from clipblip.engine import TextTokenizer
from clipblip.errors import ModelSourceError
from clipblip.export import export_model
from clipblip.export.blip import CrossKV, DecoderStep
from clipblip.manifest import Manifest
from tests.helpers import TEXTS, assert_pixels_match, varied_images

EXPECTED_GRAPHS = {
    "caption": ["cross_kv", "decoder_step", "image_tower"],
    "vqa": ["cross_kv", "decoder_step", "image_tower", "question_encoder"],
    "itm": ["image_tower", "itc_image", "itc_text", "itm_head"],
}


def test_task_graphs_and_facts_come_from_the_checkpoint(tiny_blip):
    manifest = Manifest.load(tiny_blip.exported)
    assert manifest.family == "blip" and manifest.model["task"] == tiny_blip.task
    assert sorted(manifest.graphs) == EXPECTED_GRAPHS[tiny_blip.task]
    for graph in manifest.graphs.values():
        assert graph.parity["max_abs_diff"] <= 1e-4
    if tiny_blip.task != "itm":
        text = tiny_blip.model.config.text_config
        generation = manifest.model["generation"]
        assert (generation["bos_id"], generation["eos_id"], generation["pad_id"]) == (30522, 102, 0)
        assert generation["max_positions"] == text.max_position_embeddings
        assert manifest.model["decoder"]["layers"] == text.num_hidden_layers
        step = manifest.graphs["decoder_step"]
        assert step.inputs[1].shape == ["batch", text.num_attention_heads, "past_sequence",
                                        text.hidden_size // text.num_attention_heads]


def test_a_task_that_contradicts_the_checkpoint_is_refused(blip_caption, tmp_path):
    with pytest.raises(ModelSourceError, match="BlipForConditionalGeneration.*--task vqa"):
        export_model(str(blip_caption.checkpoint), tmp_path / "out", task="vqa")
    assert not (tmp_path / "out").exists()


def test_decoder_step_with_cache_equals_transformers_decoder(blip_caption, photos):
    """The hand-written step (export wrapper) against transformers' own decoder, teacher-forced."""
    model = blip_caption.model
    pixel_values = blip_caption.processor.image_processor(images=varied_images(photos)[:2],
                                                          return_tensors="pt")["pixel_values"]
    ids = torch.tensor([[30522, 1037, 3861, 1997, 1037, 4937]] * 2)
    with torch.no_grad():
        image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
        reference = model.text_decoder(input_ids=ids, encoder_hidden_states=image_embeds).logits  # (2, 6, vocab)
        step, cross = DecoderStep(model.text_decoder), CrossKV(model.text_decoder)(image_embeds)
        layers, heads = len(step.layers), model.config.text_config.num_attention_heads
        past = [torch.zeros(2, heads, 0, step.head_dim)] * (2 * layers)
        logits, *past = step(ids[:, :3], *past, *cross)  # the prompt in one step
        got = [logits]
        for t in range(3, 6):  # then one token at a time from the cache
            logits, *past = step(ids[:, t : t + 1], *past, *cross)
            got.append(logits)
    assert torch.allclose(torch.stack(got, 1), reference[:, 2:], atol=1e-5)


def test_preprocessing_matches_the_blip_processor(tiny_blip, photos, odd_images):
    assert_pixels_match(tiny_blip.exported, tiny_blip.processor.image_processor, photos + list(odd_images.values()))


def test_tokenizer_matches_blips_bert_tokenizer(tiny_blip, blip_tokenizer):
    manifest = Manifest.load(tiny_blip.exported)
    tokenizer = TextTokenizer.from_manifest(tiny_blip.exported, manifest.tokenizer)
    assert tokenizer.ids(TEXTS) == blip_tokenizer(TEXTS, truncation=True, max_length=512).input_ids
    assert tokenizer.ids(["a photo of a cat"]) == [[101, 1037, 6302, 1997, 1037, 4937, 102]]
