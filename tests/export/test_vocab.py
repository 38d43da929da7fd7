"""The Gemma and XLM-R stand-in tokenizers of clipblip.export.vocab: trained here, saved, loaded back as transformers
loads the real ones (AutoTokenizer.from_pretrained on the folder, as open_clip's HFTokenizer does)."""

from __future__ import annotations

import json

import pytest

from clipblip.export import vocab

VOCAB_SIZE = 4000
MAX_LENGTH = 16
# CJK (猫 is in neither training vocabulary), emoji, accents, a control character, a tab, a newline, two spaces
TEXT = "A photo of 東京 and 猫 🐱, café naïve Ñandú\x07 tab\tend\nnew  line"


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma")
    return vocab.gemma_tokenizer(VOCAB_SIZE, MAX_LENGTH, str(folder)), folder


@pytest.fixture(scope="module")
def xlm_roberta(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xlmr")
    return vocab.xlm_roberta_tokenizer(VOCAB_SIZE, MAX_LENGTH, str(folder)), folder


def test_gemma_loads_back_as_gemma_tokenizer(gemma):
    from transformers import AutoTokenizer, GemmaTokenizer

    tokenizer, folder = gemma
    loaded = AutoTokenizer.from_pretrained(folder)
    for tok in (tokenizer, loaded):
        assert type(tok) is GemmaTokenizer
        assert len(tok) == VOCAB_SIZE and tok.model_max_length == MAX_LENGTH
        assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id, tok.mask_token_id) == (
            0, 1, 2, 3, 4)
        assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = spec["model"]
    assert model["type"] == "BPE" and model["byte_fallback"] and model["fuse_unk"] and model["unk_token"] == "<unk>"
    assert all(f"<0x{b:02X}>" in model["vocab"] for b in range(256))
    assert spec["normalizer"] == {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    assert [d["type"] for d in spec["decoder"]["decoders"]] == ["Replace", "ByteFallback", "Fuse"]


def test_gemma_adds_bos_only_and_round_trips_any_text(gemma):
    tokenizer, _ = gemma
    ids = tokenizer(TEXT).input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id not in ids[1:]
    assert tokenizer.eos_token_id not in ids and tokenizer.unk_token_id not in ids  # byte fallback, never <unk>
    assert "<0xE7>" in tokenizer.convert_ids_to_tokens(ids)  # 猫 (E7 8C AB) as bytes
    assert tokenizer.decode(ids, skip_special_tokens=True) == TEXT


def test_xlm_roberta_loads_back_as_xlm_roberta_tokenizer(xlm_roberta):
    from transformers import AutoTokenizer, XLMRobertaTokenizer

    tokenizer, folder = xlm_roberta
    loaded = AutoTokenizer.from_pretrained(folder)
    for tok in (tokenizer, loaded):
        assert type(tok) is XLMRobertaTokenizer
        assert len(tok) == VOCAB_SIZE and tok.model_max_length == MAX_LENGTH
        assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id) == (
            0, 1, 2, 3, VOCAB_SIZE - 1)
        assert tok.convert_ids_to_tokens([0, 1, 2, 3, VOCAB_SIZE - 1]) == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert spec["model"]["type"] == "Unigram" and spec["model"]["unk_id"] == 3
    assert spec["normalizer"]["type"] == "Precompiled" and spec["normalizer"]["precompiled_charsmap"]
    assert [p["type"] for p in spec["pre_tokenizer"]["pretokenizers"]] == ["WhitespaceSplit", "Metaspace"]


def test_xlm_roberta_encodes_any_text_in_s_rows(xlm_roberta):
    tokenizer, _ = xlm_roberta
    ids = tokenizer(TEXT).input_ids
    assert ids[0] == 0 and ids[-1] == 2 and all(0 <= i < VOCAB_SIZE for i in ids)
    # XLM-R has no byte fallback: what the words never had (猫, the emoji) is <unk>; NFKC drops the control
    # character, the pre-tokenizer the tab, newline and double space
    assert tokenizer.decode(ids) == "<s> A photo of 東京 and <unk> <unk>, café naïve Ñandú tab end new line</s>"


def test_xlm_roberta_truncation_keeps_the_closing_token(xlm_roberta):
    tokenizer, _ = xlm_roberta
    long = tokenizer(["word " * 50, "word"], max_length=8, truncation=True, padding="max_length").input_ids
    assert [row[0] for row in long] == [0, 0] and long[0][-1] == 2 and len(long[0]) == len(long[1]) == 8
    assert long[1][long[1].index(2) + 1:] == [1] * (7 - long[1].index(2))  # then <pad>


@pytest.mark.slow  # trains both again (3 s): the suite's time is near its 4 minutes
@pytest.mark.parametrize("make, trained", [(vocab.gemma_tokenizer, vocab._gemma_sentencepiece),
                                           (vocab.xlm_roberta_tokenizer, vocab._xlm_roberta_sentencepiece)])
def test_files_are_the_same_every_time(make, trained, tmp_path):
    make(VOCAB_SIZE, MAX_LENGTH, str(tmp_path / "first"))
    trained.cache_clear()  # trained again, not the cached model
    make(VOCAB_SIZE, MAX_LENGTH, str(tmp_path / "second"))
    names = sorted(p.name for p in (tmp_path / "first").iterdir())
    assert "tokenizer.json" in names and names == sorted(p.name for p in (tmp_path / "second").iterdir())
    for name in names:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name
