import numpy as np
import pytest
import torch

from clipblip.engine import BlipEngine
from clipblip.errors import GenerationConfigError, UsageError
from tests.helpers import BLIP_QUESTIONS, GENERATION_CAP, end_lengths, varied_images


def open_engine(tiny_blip, **kwargs):
    return BlipEngine.from_dir(tiny_blip.exported, provider="cpu", threads=2, **kwargs)


def hf_rows(generated, eos_id: int, skip: int) -> list[list[int]]:
    """transformers' output rows without the prompt, cut after [SEP] (finished rows are padded)."""
    rows = []
    for row in generated[:, skip:].tolist():
        rows.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return rows


def pixel_values(tiny_blip, images):
    return tiny_blip.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("prompt", [None, "a picture of"])
def test_captions_token_for_token(blip_caption, photos, prompt):
    tiny_blip, engine = blip_caption, open_engine(blip_caption)
    images = varied_images(photos)
    kwargs = {}
    if prompt:
        enc = tiny_blip.processor.tokenizer([prompt] * len(images), return_tensors="pt")
        kwargs = dict(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    with torch.no_grad():
        ref = tiny_blip.model.generate(pixel_values=pixel_values(tiny_blip, images), max_new_tokens=GENERATION_CAP,
                                       num_beams=1, do_sample=False, **kwargs)
    eos = tiny_blip.model.config.text_config.sep_token_id
    prompt_len = 1 if prompt is None else kwargs["input_ids"].shape[1] - 1
    generations = engine.generate_captions(images, prompt=prompt, max_new_tokens=GENERATION_CAP)
    assert [g.token_ids for g in generations] == hf_rows(ref, eos, prompt_len)
    assert [g.prompt_ids for g in generations] == ref[:, :prompt_len].tolist()
    assert [g.text for g in generations] == tiny_blip.processor.batch_decode(ref, skip_special_tokens=True)
    if prompt is None:  # the batch really has rows ending at different steps, and rows at the cap
        lengths = end_lengths(ref[:, 1:], eos)
        assert None in lengths and len({n for n in lengths if n is not None}) >= 1 and len(set(lengths)) >= 2
    single = engine.generate_captions(images[:1], prompt=prompt, max_new_tokens=GENERATION_CAP)
    assert single[0].token_ids == generations[0].token_ids


def test_vqa_answers_token_for_token(blip_vqa, photos):
    tiny_blip, engine = blip_vqa, open_engine(blip_vqa)
    images = varied_images(photos)
    enc = tiny_blip.processor.tokenizer(BLIP_QUESTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = tiny_blip.model.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                                       pixel_values=pixel_values(tiny_blip, images), max_new_tokens=GENERATION_CAP,
                                       num_beams=1, do_sample=False)
    eos = tiny_blip.model.config.text_config.sep_token_id
    generations = engine.generate_answers(images, BLIP_QUESTIONS, max_new_tokens=GENERATION_CAP)
    assert [g.token_ids for g in generations] == hf_rows(ref, eos, 1)
    assert [g.text for g in generations] == tiny_blip.processor.batch_decode(ref, skip_special_tokens=True)
    lengths = end_lengths(ref[:, 1:], eos)
    assert None in lengths and len(set(lengths)) >= 2


def test_match_within_1e_4(blip_itm, photos):
    tiny_blip, engine = blip_itm, open_engine(blip_itm)
    images = varied_images(photos)[:3]
    texts = ["a woman in uniform", "a blue box of coloured pencils", "", "red"]
    scores = engine.match(images, texts)
    pv = pixel_values(tiny_blip, images)
    ref_itm, ref_itc = np.zeros((3, 4)), np.zeros((3, 4))
    for j, text in enumerate(texts):
        enc = tiny_blip.processor.tokenizer([text] * 3, return_tensors="pt")
        with torch.no_grad():
            itm = tiny_blip.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=pv)
            itc = tiny_blip.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=pv,
                                  use_itm_head=False)
        ref_itm[:, j] = torch.softmax(itm.itm_score, dim=-1)[:, 1].numpy()
        ref_itc[:, j] = np.diag(itc.itm_score.numpy())
    assert scores.itm.shape == scores.itc.shape == (3, 4)
    assert np.abs(scores.itm - ref_itm).max() < 1e-4
    assert np.abs(scores.itc - ref_itc).max() < 1e-4
    assert np.ptp(scores.itm) > 1e-3  # the scores really vary


def test_max_new_tokens_is_validated(tiny_blip, photos):
    engine = open_engine(tiny_blip)
    if tiny_blip.task == "itm":
        with pytest.raises(UsageError, match="does match, not caption.*--task caption"):
            engine.caption(photos)
        return
    run = engine.caption if tiny_blip.task == "caption" else (lambda im, **kw: engine.answer(im, "what?", **kw))
    for bad in (0, -3, 10**6):
        with pytest.raises(GenerationConfigError, match="max_new_tokens"):
            run(photos[:1], max_new_tokens=bad)


@pytest.mark.parametrize("task", ["caption", "vqa"])
def test_decoder_graph_takes_cross_attention_keys_not_image_states(task, request):
    tiny_blip = request.getfixturevalue(f"blip_{task}")
    import onnx

    from clipblip.manifest import Manifest

    manifest = Manifest.load(tiny_blip.exported)
    graph = onnx.load(str(tiny_blip.exported / manifest.graphs["decoder_step"].file))
    inputs = [i.name for i in graph.graph.input]
    layers = tiny_blip.model.config.text_config.num_hidden_layers
    assert "encoder_hidden_states" not in inputs and "image_embeds" not in inputs
    assert sum(name.startswith("cross_key_") for name in inputs) == layers
    assert manifest.graphs["cross_kv"].inputs[0].name == "encoder_hidden_states"



def test_only_cross_kv_projects_the_image(blip_caption):
    """In the caption fixture the image is 48 wide and the decoder 32: a weight with a 48 dimension
    projects image states, and the step graph must hold none (cross_kv holds 2 per layer)."""
    import onnx

    from clipblip.manifest import Manifest

    manifest = Manifest.load(blip_caption.exported)
    width = blip_caption.model.config.text_config.encoder_hidden_size

    def image_projections(graph_name):
        graph = onnx.load(str(blip_caption.exported / manifest.graphs[graph_name].file)).graph
        return [i.name for i in graph.initializer if len(i.dims) == 2 and width in i.dims]

    layers = blip_caption.model.config.text_config.num_hidden_layers
    assert image_projections("decoder_step") == []
    assert len(image_projections("cross_kv")) == 2 * layers


def test_vqa_single_image_token_for_token(blip_vqa, photos):
    engine = open_engine(blip_vqa)
    image, question = varied_images(photos)[1], BLIP_QUESTIONS[1]
    enc = blip_vqa.processor.tokenizer([question], return_tensors="pt")
    with torch.no_grad():
        ref = blip_vqa.model.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                                      pixel_values=pixel_values(blip_vqa, [image]), max_new_tokens=GENERATION_CAP,
                                      num_beams=1, do_sample=False)
    eos = blip_vqa.model.config.text_config.sep_token_id
    assert engine.generate_answers([image], question, GENERATION_CAP)[0].token_ids == hf_rows(ref, eos, 1)[0]


def test_io_binding_decoder_gives_the_same_tokens(blip_caption, blip_vqa, photos):
    """The device path (caches kept as OrtValues between steps, as on CUDA) exercised on the CPU."""
    images = varied_images(photos)
    host = open_engine(blip_caption, io_binding=False)
    bound = open_engine(blip_caption, io_binding=True)
    assert type(bound.decoder).__name__ == "DeviceDecoder" and type(host.decoder).__name__ == "HostDecoder"
    for prompt in (None, "a picture of"):
        assert [g.token_ids for g in bound.generate_captions(images, prompt, GENERATION_CAP)] == \
            [g.token_ids for g in host.generate_captions(images, prompt, GENERATION_CAP)]
    vqa_host, vqa_bound = open_engine(blip_vqa, io_binding=False), open_engine(blip_vqa, io_binding=True)
    assert [g.token_ids for g in vqa_bound.generate_answers(images, BLIP_QUESTIONS, GENERATION_CAP)] == \
        [g.token_ids for g in vqa_host.generate_answers(images, BLIP_QUESTIONS, GENERATION_CAP)]
