"""Chinese-CLIP: a tiny random checkpoint with the real BERT-Chinese vocabulary, exported and run by
ChineseClipEngine, against transformers' ChineseCLIPModel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipblip.engine import ChineseClipEngine
from clipblip.export import export_model
from clipblip.manifest import Manifest
from tests.helpers import reference_image_embeddings

TEXTS = ["一只猫", "我 喜欢 小猫 和 小狗", "穿制服的女人 and a Car", "🐱 猫咪 😺", "", "猫" * 300,
         "ＡＢＣ　全角", "  spaces   everywhere  "]


@pytest.fixture(scope="module")
def tiny_cn(tmp_path_factory):
    from transformers import ChineseCLIPConfig, ChineseCLIPImageProcessorPil, ChineseCLIPModel, ChineseCLIPProcessor

    from clipblip.export.vocab import chinese_bert_tokenizer

    root = tmp_path_factory.mktemp("chinese-clip")
    torch.manual_seed(7)
    config = ChineseCLIPConfig(
        text_config=dict(vocab_size=21128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64),
        vision_config=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                           image_size=36, patch_size=12),
        projection_dim=20, logit_scale_init_value=3.0)
    model = ChineseCLIPModel(config).eval()
    processor = ChineseCLIPProcessor(
        image_processor=ChineseCLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 36, "width": 36}),
        tokenizer=chinese_bert_tokenizer(52))
    model.save_pretrained(root / "checkpoint")
    processor.save_pretrained(root / "checkpoint")
    export_model(str(root / "checkpoint"), root / "exported")
    model = ChineseCLIPModel.from_pretrained(root / "checkpoint").eval()
    processor = ChineseCLIPProcessor.from_pretrained(root / "checkpoint", backend="pil")
    return model, processor, root / "exported"


@pytest.fixture(scope="module")
def engine(tiny_cn):
    return ChineseClipEngine.from_dir(tiny_cn[2])


def reference_texts(model, processor, texts):
    inputs = processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        feats = model.get_text_features(**inputs).pooler_output
    return inputs, torch.nn.functional.normalize(feats, dim=-1).numpy()


def test_the_folder_says_what_the_family_is(tiny_cn):
    manifest = Manifest.load(tiny_cn[2])
    assert manifest.family == "chinese_clip" and manifest.tasks == ["embed", "similarity", "classify"]
    assert manifest.model["scoring"] == "softmax" and manifest.model["prompt_template"] == "一张{}的照片。"
    assert manifest.tokenizer["max_length"] == 52  # the checkpoint's tokenizer, not its 64 positions
    assert manifest.tokenizer["bos_id"] == 101 and manifest.tokenizer["eos_id"] == 102  # [CLS], [SEP]
    assert manifest.model["logit_scale"] == pytest.approx(np.exp(3.0), rel=1e-6)


def test_tokens_are_the_checkpoints(tiny_cn, engine):
    inputs, _ = reference_texts(tiny_cn[0], tiny_cn[1], TEXTS)
    ids, mask = engine.tokenizer(TEXTS)
    assert ids.shape[1] == 52 and np.array_equal(ids, inputs["input_ids"].numpy())
    assert np.array_equal(mask, inputs["attention_mask"].numpy())
    assert engine.tokenizer.tokens(ids[0][:5]) == ["[CLS]", "一", "只", "猫", "[SEP]"]  # one character each


def test_text_embeddings_match_transformers(tiny_cn, engine):
    _, expected = reference_texts(tiny_cn[0], tiny_cn[1], TEXTS)
    got = engine.embed_texts(TEXTS)
    assert np.abs(got - expected).max() < 1e-4


def test_image_embeddings_match_transformers_at_odd_sizes(tiny_cn, engine, photos, odd_images):
    images = [*photos, *odd_images.values()]
    expected = reference_image_embeddings(tiny_cn[0], tiny_cn[1], images)
    assert np.abs(engine.embed_images(images) - expected).max() < 1e-4


def test_classify_is_a_softmax_over_labels_like_transformers(tiny_cn, engine, photos):
    model, processor, _ = tiny_cn
    labels = ["猫", "狗", "汽车", "穿制服的女人"]
    inputs = processor(text=[f"一张{l}的照片。" for l in labels], images=[Image.open(p) for p in photos],
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**inputs).logits_per_image.softmax(dim=-1).numpy()
    for row, ranked in zip(expected, engine.classify(photos, labels)):
        got = dict(ranked)
        assert np.abs(np.array([got[l] for l in labels]) - row).max() < 1e-4
        assert sum(got.values()) == pytest.approx(1.0, abs=1e-5)
