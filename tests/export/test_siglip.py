"""SigLIP: tiny random checkpoints with tokenizers trained here (SigLIP's SentencePiece unigram, SigLIP 2's
byte-fallback BPE), exported and run by SiglipEngine, against transformers' SiglipModel."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipblip.engine import SiglipEngine
from clipblip.export import export_model
from clipblip.manifest import Manifest
from tests.helpers import reference_image_embeddings

MAX_LENGTH = 16
CORPUS = ["a photo of a cat", "a photo of two dogs on the grass", "this is a photo of a red car", "the woman in a "
          "uniform", "一只猫 一只狗 汽车 穿制服的女人", "Hello, World! It's 3 o'clock.", "tabs\tand\nnew lines",
          "emoji 🐱 and 😺", "Àccents éverywhere naïve café"] * 20
TEXTS = ["A photo of a CAT!", "hello,   world", "  leading and trailing  ", "", "一只猫", "🐱 cat 😺",
         "don't stop", "word " * 100, "tab\tnew\nline", "a </s> inside", "▁ underline ▁x", "Àccents naïve",
         "ＡＢＣ fullwidth", "unknownzzqq words"]


def sentencepiece_tokenizer(folder):
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_prefix=str(folder / "spiece"), vocab_size=120, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    return SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=MAX_LENGTH)


def byte_fallback_bpe_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Siglip2Tokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    bpe.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
    model = json.loads(bpe.to_str())["model"]
    return Siglip2Tokenizer(vocab=model["vocab"], merges=[tuple(m) if isinstance(m, list) else tuple(m.split())
                                                          for m in model["merges"]], model_max_length=MAX_LENGTH)


def make_siglip(root, tokenizer, seed):
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor

    torch.manual_seed(seed)
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=MAX_LENGTH),
        vision_config=dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                           image_size=36, patch_size=12))
    model = SiglipModel(config).eval()
    with torch.no_grad():
        model.logit_bias.fill_(-2.5)  # SigLIP's learnt bias, which a softmax would cancel
        model.logit_scale.fill_(2.0)
    processor = SiglipProcessor(image_processor=SiglipImageProcessorPil(size={"height": 36, "width": 36}),
                                tokenizer=tokenizer)
    model.save_pretrained(root / "checkpoint")
    processor.save_pretrained(root / "checkpoint")
    export_model(str(root / "checkpoint"), root / "exported")
    return (SiglipModel.from_pretrained(root / "checkpoint").eval(), SiglipProcessor.from_pretrained(root / "checkpoint", backend="pil"),
            root / "exported")


@pytest.fixture(scope="module", params=["sentencepiece", "bpe"])
def tiny_siglip(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"siglip-{request.param}")
    tokenizer = sentencepiece_tokenizer(root) if request.param == "sentencepiece" else byte_fallback_bpe_tokenizer()
    model, processor, exported = make_siglip(root, tokenizer, seed=11)
    return request.param, model, processor, exported, SiglipEngine.from_dir(exported)


def reference_inputs(processor, texts):
    return processor.tokenizer(list(texts), padding="max_length", truncation=True, max_length=MAX_LENGTH,
                               return_tensors="pt")


def test_the_folder_says_how_texts_are_padded_and_labels_scored(tiny_siglip):
    kind, model, processor, exported, _ = tiny_siglip
    manifest = Manifest.load(exported)
    assert manifest.family == "siglip" and manifest.model["scoring"] == "sigmoid"
    assert manifest.model["logit_bias"] == pytest.approx(-2.5) and manifest.model["logit_scale"] == pytest.approx(
        np.exp(2.0), rel=1e-6)
    assert manifest.tokenizer["padding"] == "max_length" and manifest.tokenizer["max_length"] == MAX_LENGTH
    assert manifest.tokenizer["padding_side"] == processor.tokenizer.padding_side
    assert manifest.model["class_token"] is False and manifest.model["patch_grid"] == [3, 3]


def test_tokens_equal_the_checkpoints_tokenizer(tiny_siglip):
    _, _, processor, _, engine = tiny_siglip
    inputs = reference_inputs(processor, TEXTS)
    ids, mask = engine.tokenizer(TEXTS)
    for i, text in enumerate(TEXTS):
        assert ids[i].tolist() == inputs["input_ids"][i].tolist(), text
    assert np.array_equal(mask, inputs["attention_mask"].numpy())


def test_text_embeddings_match_transformers(tiny_siglip):
    kind, model, processor, _, engine = tiny_siglip
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.get_text_features(**reference_inputs(processor, TEXTS))
                                                 .pooler_output, dim=-1).numpy()
    got, errors = engine.embed_texts(TEXTS, return_errors=True)
    # SigLIP 2's tokenizer adds no token to an empty text: transformers embeds a fully masked row, clipblip refuses it
    empty = [i for i, text in enumerate(TEXTS) if not processor.tokenizer(text)["input_ids"]]
    assert empty == ([TEXTS.index("")] if kind == "bpe" else [])
    assert {i: type(e).__name__ for i, e in errors.items()} == {i: "TextInputError" for i in empty}
    for i, text in enumerate(TEXTS):
        if i not in empty:
            assert np.abs(got[i] - expected[i]).max() < 1e-4, text


def test_image_embeddings_match_transformers_at_odd_sizes(tiny_siglip, photos, odd_images):
    _, model, processor, _, engine = tiny_siglip
    images = [*photos, *odd_images.values()]
    expected = reference_image_embeddings(model, processor, images)
    assert np.abs(engine.embed_images(images) - expected).max() < 1e-4


def test_classify_scores_each_label_by_its_own_sigmoid_like_transformers(tiny_siglip, photos):
    _, model, processor, _, engine = tiny_siglip
    labels = ["cat", "dog", "car", "woman in uniform"]
    texts = [f"This is a photo of {label}." for label in labels]
    inputs = processor(text=texts, images=[Image.open(p) for p in photos], return_tensors="pt",
                       padding="max_length", max_length=MAX_LENGTH, truncation=True)
    with torch.no_grad():
        expected = torch.sigmoid(model(**inputs).logits_per_image).numpy()
    ranked = engine.classify(photos, labels)
    for row, result in zip(expected, ranked):
        got = dict(result)
        assert np.abs(np.array([got[l] for l in labels]) - row).max() < 1e-4
    alone = dict(engine.classify(photos[:1], labels[:1])[0])  # each label on its own: others do not move it
    assert alone[labels[0]] == pytest.approx(dict(ranked[0])[labels[0]], abs=1e-6)
