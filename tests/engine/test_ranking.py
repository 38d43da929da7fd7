"""VQA answer ranking (BLIP's ``inference: 'rank'``) against teacher forcing in transformers."""

import json

import numpy as np
import pytest
import torch

from clipblip.engine import BlipEngine
from clipblip.errors import GenerationConfigError, ImageError, TextInputError
from tests.helpers import run_cli, varied_images

QUESTION = "what is in the picture?"
# different lengths in tokens; "blue box of pencils" and "pencils" share their last token
CANDIDATES = ["a woman", "blue box of coloured pencils", "red", "nothing at all here", "pencils", "2"]


def open_engine(tiny_blip, **kwargs):
    return BlipEngine.from_dir(tiny_blip.exported, provider="cpu", threads=2, **kwargs)


def reference_scores(tiny_blip, images, question, candidates) -> np.ndarray:
    """(images, candidates): log-likelihood of [DEC] candidate [SEP] in transformers, teacher-forced over
    the question encoding with the all-ones question mask BlipForQuestionAnswering.generate passes."""
    model, tokenizer = tiny_blip.model, tiny_blip.processor.tokenizer
    bos, eos = model.config.text_config.bos_token_id, model.config.text_config.sep_token_id
    pixel_values = tiny_blip.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    question_enc = tokenizer([question] * len(images), return_tensors="pt")
    rows = [[bos, *tokenizer(c).input_ids[1:-1], eos] for c in candidates]
    length = max(len(r) for r in rows)
    input_ids = torch.zeros((len(rows), length), dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for j, row in enumerate(rows):
        input_ids[j, : len(row)], mask[j, : len(row)] = torch.tensor(row), 1
    out = np.zeros((len(images), len(candidates)))
    with torch.no_grad():
        image_embeds = model.vision_model(pixel_values=pixel_values)[0]
        question_states = model.text_encoder(input_ids=question_enc.input_ids,
                                             attention_mask=question_enc.attention_mask,
                                             encoder_hidden_states=image_embeds,
                                             encoder_attention_mask=torch.ones(image_embeds.shape[:-1],
                                                                               dtype=torch.long),
                                             return_dict=False)[0]
        for i in range(len(images)):
            states = question_states[i : i + 1].repeat(len(rows), 1, 1)
            logits = model.text_decoder(input_ids=input_ids, attention_mask=mask, encoder_hidden_states=states,
                                        encoder_attention_mask=torch.ones(states.shape[:-1], dtype=torch.long),
                                        return_dict=True).logits  # (candidates, length, vocab)
            log_probs = torch.log_softmax(logits.double(), dim=-1)
            for j, row in enumerate(rows):
                out[i, j] = sum(float(log_probs[j, t, row[t + 1]]) for t in range(len(row) - 1))
    return out


def as_matrix(rankings, candidates) -> np.ndarray:
    return np.array([[dict(r)[c] for c in candidates] for r in rankings])


def test_ranking_matches_transformers(blip_vqa, photos):
    engine = open_engine(blip_vqa)
    images = varied_images(photos)
    lengths = {len(blip_vqa.processor.tokenizer(c).input_ids) for c in CANDIDATES}
    assert len(lengths) >= 4  # really different lengths, so padded rows are exercised
    ref = reference_scores(blip_vqa, images, QUESTION, CANDIDATES)
    rankings = engine.rank_answers(images, QUESTION, CANDIDATES)
    got = as_matrix(rankings, CANDIDATES)
    assert np.abs(got - ref).max() < 1e-4
    for ranking, ref_row in zip(rankings, ref):
        assert [c for c, _ in ranking] == [CANDIDATES[j] for j in np.argsort(-ref_row, kind="stable")]
        scores = [s for _, s in ranking]
        assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    assert np.ptp(ref) > 1e-2  # the scores really differ
    # one image alone gives its row of the batch
    single = engine.rank_answers(images[2], QUESTION, CANDIDATES)
    assert len(single) == 1 and np.abs(as_matrix(single, CANDIDATES) - ref[2:3]).max() < 1e-4
    # the device decoder path (caches as OrtValues) gives the same scores
    device = open_engine(blip_vqa, io_binding=True).rank_answers(images[:2], QUESTION, CANDIDATES)
    assert np.abs(as_matrix(device, CANDIDATES) - ref[:2]).max() < 1e-4


def test_ranking_single_candidate_and_failed_image(blip_vqa, photos, tmp_path):
    engine = open_engine(blip_vqa)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    images = [photos[0], broken, photos[1]]
    results, errors = engine.rank_answers(images, QUESTION, ["red"], return_errors=True)
    assert list(errors) == [1] and isinstance(errors[1], ImageError) and results[1] is None
    ref = reference_scores(blip_vqa, varied_images(photos)[:2], QUESTION, ["red"])
    assert abs(results[0][0][1] - ref[0, 0]) < 1e-4 and abs(results[2][0][1] - ref[1, 0]) < 1e-4


def test_bad_candidates_are_refused(blip_vqa, photos, monkeypatch):
    engine = open_engine(blip_vqa)
    limit = blip_vqa.model.config.text_config.max_position_embeddings

    def no_work(*args, **kwargs):
        raise AssertionError("ran a model before validating")

    monkeypatch.setattr(engine, "_run", no_work)
    with pytest.raises(TextInputError, match="empty"):
        engine.rank_answers(photos, QUESTION, [])
    with pytest.raises(TextInputError, match="candidate 1: expected a string, got int"):
        engine.rank_answers(photos, QUESTION, ["yes", 3])
    with pytest.raises(TextInputError, match="single string"):
        engine.rank_answers(photos, QUESTION, "yes")
    with pytest.raises(TextInputError, match="candidate 0 .*no tokens"):
        engine.rank_answers(photos, QUESTION, ["   ", "yes"])
    with pytest.raises(TextInputError, match="question"):
        engine.rank_answers(photos, None, ["yes"])
    with pytest.raises(GenerationConfigError, match=rf"candidate 1 \('word word.*{limit} positions"):
        engine.rank_answers(photos, QUESTION, ["yes", " ".join(["word"] * limit)])
    with pytest.raises(GenerationConfigError, match="candidate 0"):
        engine.rank_answers(photos, QUESTION, ["x" * 10**6])
    fits = " ".join(["word"] * (limit - 2))  # exactly the positions: accepted
    monkeypatch.undo()
    assert len(engine.rank_answers(photos[:1], QUESTION, [fits])[0]) == 1


def test_cli_candidates(blip_vqa, photos, capsys):
    ref = reference_scores(blip_vqa, varied_images(photos)[:2], QUESTION, CANDIDATES)
    code, out, err = run_cli(capsys, "vqa", blip_vqa.exported, *photos, "--question", QUESTION,
                             "--candidates", *CANDIDATES, "--provider", "cpu")
    assert code == 0, err
    blocks = out.split(f"{photos[1]}: ")
    for i, block in enumerate([blocks[0].split(f"{photos[0]}: ")[1], blocks[1]]):
        lines = block.strip("\n").split("\n")
        order = [CANDIDATES[j] for j in np.argsort(-ref[i], kind="stable")]
        assert lines[0].startswith(f"{order[0]} (")
        assert [line.strip().rsplit("  ", 1)[0].strip() for line in lines[1:]] == order

    code, out, _ = run_cli(capsys, "vqa", blip_vqa.exported, *photos, "--question", QUESTION,
                           "--candidates", *CANDIDATES, "--provider", "cpu", "--json")
    assert code == 0
    doc = json.loads(out)
    for i, result in enumerate(doc["results"]):
        assert result["image"] == str(photos[i])
        scores = {r["answer"]: r["score"] for r in result["ranking"]}
        assert [r["answer"] for r in result["ranking"]] == [CANDIDATES[j] for j in np.argsort(-ref[i], kind="stable")]
        assert max(abs(scores[c] - ref[i, j]) for j, c in enumerate(CANDIDATES)) < 1e-4

    code, _, err = run_cli(capsys, "vqa", blip_vqa.exported, photos[0], "--question", QUESTION,
                           "--candidates", "yes", "   ")
    assert code == TextInputError.exit_code and "candidate 1" in err


def test_nan_logits_fail_only_their_image(blip_vqa, photos, monkeypatch):
    from clipblip.errors import NumericalError, PartialFailure

    engine = open_engine(blip_vqa, io_binding=False)
    cross, calls = engine.decoder.cross, []

    def poisoned(encoder_states):  # the second image's cross-attention keys are NaN
        calls.append(1)
        out = cross(encoder_states)
        return [np.full_like(k, np.nan) for k in out] if len(calls) == 2 else out

    monkeypatch.setattr(engine.decoder, "cross", poisoned)
    results, errors = engine.rank_answers(photos, QUESTION, CANDIDATES, return_errors=True)
    assert list(errors) == [1] and isinstance(errors[1], NumericalError) and "item 1" in str(errors[1])
    assert results[1] is None and len(results[0]) == len(CANDIDATES)
    calls.clear()
    with pytest.raises(PartialFailure):
        engine.rank_answers(photos, QUESTION, CANDIDATES)
