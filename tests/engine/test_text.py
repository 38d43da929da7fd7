from clipblip.engine import TextTokenizer
from clipblip.manifest import Manifest
from tests.helpers import TEXTS


def test_known_clip_ids(clip_tokenizer):
    assert clip_tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_ids_match_the_transformers_tokenizer(tiny_clip, clip_tokenizer):
    tokenizer = TextTokenizer.from_manifest(tiny_clip.exported, Manifest.load(tiny_clip.exported).tokenizer)
    ids = tokenizer.ids(TEXTS)
    ref = clip_tokenizer(TEXTS, truncation=True, max_length=77).input_ids
    assert ids == ref
    longest = max(ids, key=len)
    assert len(longest) == 77 and longest[-1] == 49407  # truncated, end-of-text kept


def test_padding_and_mask(tiny_clip):
    manifest = Manifest.load(tiny_clip.exported)
    tokenizer = TextTokenizer.from_manifest(tiny_clip.exported, manifest.tokenizer)
    input_ids, mask = tokenizer(["a cat", "a photo of a cat"])
    assert input_ids.shape == mask.shape == (2, 7)
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert input_ids[0, 4:].tolist() == [manifest.tokenizer["pad_id"]] * 3
