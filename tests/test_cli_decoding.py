"""Decoding options through the CLI, the HTTP API's bodies and the checkpoint's own generation config:
the same tokens as the engine called directly (whose parity with transformers tests/engine/test_decoding.py
holds), beam scores equal to transformers' ``sequences_scores``, and bad values refused before any work."""

import json
import shutil

import numpy as np
import pytest
import torch

from clipblip.engine import BlipEngine
from clipblip.manifest import MANIFEST_NAME
from tests.helpers import BLIP_QUESTIONS, run_cli, varied_images


@pytest.fixture(scope="module")
def caption(blip_caption):
    return BlipEngine.from_dir(blip_caption.exported)


@pytest.mark.parametrize("argv, options", [
    (["--num-beams", "3", "--length-penalty", "2.0", "--max-new-tokens", "6"],
     dict(num_beams=3, length_penalty=2.0, max_new_tokens=6)),
    (["--num-beams", "2", "--early-stopping", "never", "--no-repeat-ngram-size", "2", "--max-new-tokens", "6"],
     dict(num_beams=2, early_stopping="never", no_repeat_ngram_size=2, max_new_tokens=6)),
    (["--repetition-penalty", "1.3", "--min-new-tokens", "3", "--max-new-tokens", "6"],
     dict(repetition_penalty=1.3, min_new_tokens=3, max_new_tokens=6)),
    (["--sample", "--seed", "7", "--temperature", "1.5", "--top-k", "20", "--max-new-tokens", "6"],
     dict(do_sample=True, seed=7, temperature=1.5, top_k=20, max_new_tokens=6)),
    (["--sample", "--seed", "3", "--min-p", "0.2", "--max-new-tokens", "6"],
     dict(do_sample=True, seed=3, min_p=0.2, max_new_tokens=6)),
    (["--preset", "paper"], dict(num_beams=3, max_new_tokens=19, min_new_tokens=4)),  # [DEC] is the prompt
])
def test_cli_options_give_the_engines_tokens(blip_caption, caption, photos, capsys, argv, options):
    code, out, _ = run_cli(capsys, "caption", blip_caption.exported, *photos, *argv, "--json")
    expected = caption.generate_captions(photos, **options)
    results = json.loads(out)["results"]
    assert code == 0 and [r["token_ids"] for r in results] == [g.token_ids for g in expected]
    assert all(("score" in r) == (options.get("num_beams", 1) > 1) for r in results)


def test_vqa_options_and_candidates(blip_vqa, photos, capsys):
    engine = BlipEngine.from_dir(blip_vqa.exported)
    code, out, _ = run_cli(capsys, "vqa", blip_vqa.exported, *photos, "--question", BLIP_QUESTIONS[0],
                           "--num-beams", "3", "--max-new-tokens", "5", "--json")
    expected = engine.generate_answers(photos, BLIP_QUESTIONS[0], 5, num_beams=3)
    assert code == 0 and [r["token_ids"] for r in json.loads(out)["results"]] == [g.token_ids for g in expected]
    code, _, err = run_cli(capsys, "vqa", blip_vqa.exported, photos[0], "--question", "what?", "--candidates", "a",
                           "b", "--num-beams", "3")
    assert code == 2 and "--num-beams would be ignored" in err


def test_beam_scores_are_transformers_sequences_scores(blip_caption, caption, photos):
    images = varied_images(photos)
    ours = caption.generate_captions(images, max_new_tokens=6, num_beams=3, length_penalty=0.5)
    pixel_values = blip_caption.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        theirs = blip_caption.model.generate(pixel_values=pixel_values, max_new_tokens=6, num_beams=3,
                                             length_penalty=0.5, output_scores=True, return_dict_in_generate=True)
    np.testing.assert_allclose([g.score for g in ours], theirs.sequences_scores.numpy(), atol=1e-4)


@pytest.mark.parametrize("argv, code, words", [
    (["--num-beams", "0"], 11, "num_beams=0"),
    (["--top-p", "1.5", "--sample"], 11, "top_p=1.5"),
    (["--temperature", "0", "--sample"], 11, "temperature=0"),
    (["--min-new-tokens", "9", "--max-new-tokens", "5"], 11, "min_new_tokens=9"),
    (["--early-stopping", "maybe"], 2, "--early-stopping"),
    (["--seed", "1.5"], 2, "--seed"),
    (["--temperature", "0.5"], 11, "temperature: not read by greedy decoding"),  # once: ignored
    (["--top-k", "5", "--seed", "1", "--num-beams", "2"], 11, "top_k, seed: not read by beam search decoding"),
    (["--length-penalty", "2"], 11, "length_penalty: not read by greedy decoding"),
    (["--sample", "--num-beams", "1", "--early-stopping", "true"], 11, "or choose beam search"),
])
def test_bad_option_values_are_refused_before_any_work(blip_caption, tmp_path, capsys, argv, code, words):
    try:
        got, out, err = run_cli(capsys, "caption", blip_caption.exported, tmp_path / "not-read.jpg", *argv)
    except SystemExit as exited:  # argparse's own refusal of a value of the wrong type
        got, err = exited.code, capsys.readouterr().err
    assert got == code and words in err and "not-read.jpg" not in err


def test_the_checkpoints_generation_config_gives_the_defaults(blip_caption, photos, tmp_path):
    folder = tmp_path / "exported"
    shutil.copytree(blip_caption.exported, folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["model"]["generation"]["config"] = {"num_beams": 2, "max_length": 6, "min_length": 3}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    engine = BlipEngine.from_dir(folder)
    explicit = engine.generate_captions(photos, max_new_tokens=5, num_beams=2, min_new_tokens=2)
    assert [g.token_ids for g in engine.generate_captions(photos)] == [g.token_ids for g in explicit]
    assert [g.token_ids for g in engine.generate_captions(photos, num_beams=1)] == \
        [g.token_ids for g in engine.generate_captions(photos, max_new_tokens=5, num_beams=1, min_new_tokens=2)]
