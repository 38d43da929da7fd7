"""What a new user meets: the mistakes people make on the command line (swapped arguments, typos, odd output
names, folders for files) each get one line that names the input at fault, before any work; outputs say what
their numbers are; help explains every option and shows its default."""

import argparse
import json

import numpy as np
import pytest

from clipblip.cli import main
from clipblip.cli.common import format_table
from clipblip.cli.main import build_parser
from clipblip.engine.text import TextTokenizer
from clipblip.errors import EXIT_CODES
from clipblip.inputs import distinct_names
from tests.helpers import run_cli


def one_line(err: str) -> bool:
    return err.strip().count("\n") == 0 and "internal error" not in err and "Traceback" not in err


@pytest.mark.parametrize("plot, force, code, words", [
    ("sim.jpg", False, 2, "has the extension '.jpg'; figures are written as .png, .svg or .pdf"),
    ("sim", False, 2, "has no extension"),  # once: matplotlib's "Format 'tmp' is not supported"
    ("sim.txt", False, 2, "has the extension '.txt'"),
    ("folder", False, 6, "is a folder; give the name of a file"),  # once: "pass --force"...
    ("folder", True, 6, "is a folder; give the name of a file"),  # ...and with it: "is a folder"
])
def test_a_figure_name_that_cannot_be_written_is_refused_before_any_work(clip_with_attentions, photos, tmp_path,
                                                                         monkeypatch, capsys, plot, force, code, words):
    from clipblip.engine import ClipEngine

    (tmp_path / "folder").mkdir()
    monkeypatch.setattr(ClipEngine, "similarity", lambda *a, **k: pytest.fail("the model ran before the check"))
    target = tmp_path / plot
    got, out, err = run_cli(capsys, "similarity", clip_with_attentions.exported, "--images", photos[0], "--texts",
                            "a", "--plot", target, *(["--force"] if force else []))
    assert got == code and words in err and str(target) in err and one_line(err) and out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"] and not any((tmp_path / "folder").iterdir())


def test_a_figure_that_fails_to_write_still_leaves_the_table(clip_with_attentions, photos, tmp_path, monkeypatch,
                                                              capsys):
    from clipblip import files

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "atomic_output", full_disk)
    code, out, err = run_cli(capsys, "similarity", clip_with_attentions.exported, "--images", photos[0], "--texts",
                             "a", "--plot", tmp_path / "s.png")
    assert code == EXIT_CODES["OutputError"] and photos[0].name in out  # the results came first
    assert "s.png: cannot be written (No space left on device)" in err and one_line(err)


def test_viz_toy_attention_checks_its_output_and_sizes(tmp_path, capsys):
    code, _, err = run_cli(capsys, "viz", "toy-attention", "--out", tmp_path / "toy")
    assert code == 2 and "--out" in err and "has no extension" in err and one_line(err)
    code, _, err = run_cli(capsys, "viz", "toy-attention", "--out", tmp_path / "toy.png", "--d-model", 7)
    assert code == 2 and "--d-model 7 --heads 2" in err and one_line(err)  # once: internal error: ValueError
    assert list(tmp_path.iterdir()) == []


def test_swapped_arguments_are_named_as_such(clip_with_attentions, blip_caption, photos, tmp_path, capsys):
    clip = clip_with_attentions.exported
    album = tmp_path / "album"
    album.mkdir()
    (album / "a.jpg").write_bytes(photos[0].read_bytes())
    cases = [["classify", photos[0], clip, "--labels", "a", "b"],  # once: "IMAGE ...: a folder with no image files"
             ["caption", photos[0], blip_caption.exported],
             ["viz", "attention", photos[0], clip, "--out", tmp_path / "a.png"],
             ["index", album, clip, "--db", tmp_path / "p.db"]]  # once: "album/manifest.json: missing"
    for argv in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "look swapped" in err and "DIR" in err and one_line(err), argv
    code, _, err = run_cli(capsys, "classify", clip, blip_caption.exported, "--labels", "a", "b")
    assert code == 2 and "is a model folder, not images" in err and one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["album"]


def test_a_model_path_that_is_a_file_or_missing_says_which(photos, tmp_path, capsys):
    code, _, err = run_cli(capsys, "classify", photos[0], photos[0], "--labels", "a", "b")
    assert code == EXIT_CODES["ModelLoadError"] and "is a file, not a model folder" in err and one_line(err)
    code, _, err = run_cli(capsys, "verify", tmp_path / "nope")
    assert code == 7 and "no such folder" in err and "directory" not in err


def test_a_file_where_export_writes_a_folder_is_named_without_asking_for_force(photos, tmp_path, capsys):
    plain = tmp_path / "photo.jpg"
    plain.write_bytes(photos[0].read_bytes())
    code, _, err = run_cli(capsys, "export", "random:clip-tiny", "--out", plain)
    assert code == 6 and "is a file, not a model folder" in err and "pass --force" not in err
    assert plain.read_bytes() == photos[0].read_bytes()


@pytest.mark.parametrize("argv, typo, close", [
    (["classify", "DIR", "x.jpg", "--lables", "a", "b"], "--lables", "--labels"),  # once: "required: --labels"
    (["classify", "DIR", "x.jpg", "--labels", "a", "--tmplate", "{}"], "--tmplate", "--template"),
    (["vqa", "DIR", "x.jpg", "--qestion", "what?"], "--qestion", "--question"),
    (["viz", "attention", "DIR", "x.jpg", "--ot", "a.png"], "--ot", "--out"),
    (["search", "--db", "p.db", "--txt", "a cat"], "--txt", "--text"),
])
def test_a_mistyped_option_is_named_with_its_close_match(capsys, argv, typo, close):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"unrecognized arguments: {typo}; did you mean {close}?" in err
    assert "required" not in err


def test_counts_below_one_are_refused(clip_with_attentions, photos, capsys):
    code, out, err = run_cli(capsys, "classify", clip_with_attentions.exported, photos[0], "--labels", "a", "b",
                             "--top-k", 0)
    assert code == 2 and "--top-k 0" in err and out == ""  # once: nothing printed, exit 0
    with pytest.raises(SystemExit) as exited:  # once: "image_tower.onnx: ONNX Runtime cannot load graph"
        main(["classify", str(clip_with_attentions.exported), str(photos[0]), "--labels", "a", "--threads", "0"])
    assert exited.value.code == 2 and "argument --threads: 0: must be at least 1" in capsys.readouterr().err


def test_a_template_with_two_slots_is_one_line_naming_it(clip_with_attentions, photos, capsys):
    code, _, err = run_cli(capsys, "classify", clip_with_attentions.exported, photos[0], "--labels", "a", "b",
                           "--template", "a {} photo {}")
    assert code == 2 and "'a {} photo {}'" in err and one_line(err)


def test_label_mistakes_get_a_warning(clip_with_attentions, photos, capsys):
    code, out, err = run_cli(capsys, "classify", clip_with_attentions.exported, photos[0], "--labels", "cat,", "dog")
    assert code == 0 and "'cat,': a comma is part of the label" in err
    code, out, err = run_cli(capsys, "classify", clip_with_attentions.exported, photos[0], "--labels", "cat")
    assert code == 0 and "one label" in err and "100%" in err
    code, out, err = run_cli(capsys, "classify", clip_with_attentions.exported, photos[0], "--labels", "", "dog")
    assert code == 0 and "  ''" in out  # a blank label is shown, quoted


def test_texts_of_unknown_tokens_only_are_warned_of(blip_itm, photos, capsys):
    code, out, err = run_cli(capsys, "match", blip_itm.exported, "--images", photos[0], "--texts", "猫", "a cat",
                             "狗")
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert code == 0 and len(warnings) == 1  # BERT's uncased vocabulary has neither character
    assert "'猫', '狗'" in warnings[0] and "a cat" not in warnings[0] and "unknown" in warnings[0]
    code, _, err = run_cli(capsys, "match", blip_itm.exported, "--images", photos[0], "--texts", "a cat")
    assert code == 0 and "warning" not in err


def word_piece(vocab):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return tokenizer


def sentence_piece(pieces):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.Unigram([(p, -1.0) for p in pieces], unk_id=0))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tokenizer


@pytest.mark.parametrize("make, vocab", [(word_piece, ["[UNK]", "[CLS]", "[SEP]", "cat", "dog"]),
                                         (sentence_piece, ["<unk>", "</s>", "▁", "▁cat", "▁dog", "c", "a", "t"])])
def test_the_engine_finds_texts_of_unknown_tokens_only(make, vocab):
    tokenizer = TextTokenizer(make(vocab), max_length=16, pad_id=0)
    texts = ["猫", "cat", "猫 cat", "", "  ", "汽车 狗", "dog"]
    assert tokenizer.unknown_texts(texts) == [0, 5]  # empty and blank texts are no unknown words


def test_search_json_says_random_weights(clip_with_attentions, photos, tmp_path, capsys):
    from clipblip.manifest import Manifest

    db = tmp_path / "p.db"
    assert run_cli(capsys, "index", clip_with_attentions.exported, *photos, "--db", db)[0] == 0
    code, out, _ = run_cli(capsys, "search", "--db", db, "--text", "a cat", "-k", 1, "--json")
    document = json.loads(out)
    assert code == 0 and document["random_weights"] is Manifest.load(clip_with_attentions.exported).random_weights
    assert len(document["hits"]) == 1


def test_vqa_candidates_say_their_scores_are_log_likelihoods(blip_vqa, photos, capsys):
    code, out, _ = run_cli(capsys, "vqa", blip_vqa.exported, photos[0], "--question", "what colour?",
                           "--candidates", "red", "green")
    lines = out.splitlines()
    assert code == 0 and "log-likelihood" in lines[0] and "(log-likelihood -" in lines[1]


def test_photos_of_one_name_get_the_shortest_distinguishing_paths(clip_with_attentions, photos, tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "img.jpg").write_bytes(photos[0].read_bytes())
    code, out, _ = run_cli(capsys, "similarity", clip_with_attentions.exported, "--images", tmp_path, "--texts", "x")
    rows = [line.split()[0] for line in out.splitlines()[1:]]
    assert code == 0 and rows == ["a/img.jpg", "b/img.jpg"]  # once: img.jpg twice
    assert distinct_names(["p/a/x.jpg", "p/b/x.jpg", "y.png", "x.jpg", "y.png"]) == [
        "a/x.jpg", "b/x.jpg", "y.png", "x.jpg", "y.png"]


def test_tables_print_the_decimals_that_tell_cells_apart():
    lines = format_table(["a.jpg"], ["x", "y", "z"], [[0.4557, 0.4561, 0.4557]]).splitlines()
    assert lines[1].split()[1:] == ["0.4557", "0.4561", "0.4557"]  # once: 0.456 three times
    assert format_table(["a.jpg"], ["x"], [[0.25]]).splitlines()[1].split()[1] == "0.250"


def every_parser(parser, name="clipblip"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from every_parser(subparser, f"{name} {sub}")


def test_every_option_of_every_command_is_explained_with_its_default():
    for name, parser in every_parser(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {'/'.join(action.option_strings) or action.dest}: no help line"
            shown = formatter._expand_help(action) if action.help is not argparse.SUPPRESS else ""
            if action.option_strings and not any(action.default is v for v in (None, False, argparse.SUPPRESS)):
                assert "default" in shown, f"{name} {action.option_strings[0]}: the help does not show its default"
    serve = dict(every_parser(build_parser()))["clipblip serve"].format_help()
    assert "(default: 8000)" in " ".join(serve.split())
    toy = dict(every_parser(build_parser()))["clipblip viz toy-attention"].format_help()
    assert "projections (default: 0)" in " ".join(toy.split())  # a default of 0 is shown too
