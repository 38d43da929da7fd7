"""The stand-in tokenizers of the random presets and tests: the real classes and special ids, deterministic."""

import pytest

from clipblip.export.vocab import gemma_tokenizer, xlm_roberta_tokenizer

TEXT = "Ein Foto 一只猫 🐱 café\x07 naïve"


def test_gemma_stand_in_is_a_byte_fallback_gemma_tokenizer(tmp_path):
    tokenizer = gemma_tokenizer(4000, 64, str(tmp_path / "a"))
    assert type(tokenizer).__name__ == "GemmaTokenizer"
    assert [tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id,
            tokenizer.mask_token_id] == [0, 1, 2, 3, 4]
    ids = tokenizer(TEXT).input_ids
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids, skip_special_tokens=True) == TEXT
    again = gemma_tokenizer(4000, 64, str(tmp_path / "b"))
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert again(TEXT).input_ids == ids


def test_xlm_roberta_stand_in_wraps_rows_and_keeps_the_end_when_truncating(tmp_path):
    tokenizer = xlm_roberta_tokenizer(4000, 24, str(tmp_path / "a"))
    assert type(tokenizer).__name__ == "XLMRobertaTokenizer"
    assert [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id] == \
        [0, 1, 2, 3] and tokenizer.mask_token_id == len(tokenizer) - 1
    ids = tokenizer(" ".join(["photograph"] * 40), max_length=24, truncation=True).input_ids
    assert len(ids) == 24 and ids[0] == 0 and ids[-1] == 2
    assert tokenizer(TEXT).input_ids[:2] != [0, 3]  # known words are pieces, not unknown
    xlm_roberta_tokenizer(4000, 24, str(tmp_path / "b"))
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("make", [gemma_tokenizer, xlm_roberta_tokenizer])
def test_stand_ins_load_as_open_clip_loads_them(make, tmp_path):
    from transformers import AutoTokenizer

    make(4000, 16, str(tmp_path))
    assert type(AutoTokenizer.from_pretrained(tmp_path)).__name__ == type(make(4000, 16, str(tmp_path))).__name__
