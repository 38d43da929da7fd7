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


def test_a_folder_opened_again_shares_its_parsed_tokenizer_until_the_file_changes(tiny_clip, tmp_path):
    import shutil

    facts = Manifest.load(tiny_clip.exported).tokenizer
    first = TextTokenizer.from_manifest(tiny_clip.exported, facts)
    assert TextTokenizer.from_manifest(tiny_clip.exported, facts).tokenizer is first.tokenizer
    shorter = TextTokenizer.from_manifest(tiny_clip.exported, {**facts, "max_length": 5})  # set up for its length
    assert shorter.tokenizer is not first.tokenizer and len(shorter.ids(["a b c d e f g h"])[0]) == 5
    assert len(first.ids(["a b c d e f g h"])[0]) == 10  # the first one's truncation is untouched
    folder = shutil.copytree(tiny_clip.exported, tmp_path / "copy")
    copy = TextTokenizer.from_manifest(folder, facts)
    assert copy.tokenizer is not first.tokenizer
    with open(folder / facts["file"], "a", encoding="utf-8") as f:  # the file changes: it is read again
        f.write("\n")
    assert TextTokenizer.from_manifest(folder, facts).tokenizer is not copy.tokenizer
