"""BLIP with ONNX Runtime: captions, visual question answering, image–text matching."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..defaults import MAX_BATCH
from ..errors import GenerationConfigError, NumericalError, TextInputError
from ..families import task_graphs
from ..manifest import Manifest
from .base import FolderEngine
from .decoder import DeviceDecoder, HostDecoder
from .generate import OPTION_NAMES, Generation, GenerationOptions, option_rules, beam_decode, greedy_decode, sample_decode, trim
from .images import DEFAULT_MAX_PIXELS, ImageInput, as_images, describe
from .items import as_texts, attention_names, batches, check_finite, finish, finite_attention, softmax
from .ranking import best_first, candidate_ids, teacher_forced_scores

__all__ = ["BlipEngine", "CaptionAttention", "MatchScores"]



@dataclass
class CaptionAttention:
    """Where a caption came from: the decoder's attention over its own tokens and over the image.

    ``tokens`` label the decoder positions ([DEC], prompt, generated words but the last);
    ``self_attention`` is (layers, heads, positions, positions). ``cross_attention`` is
    (layers, heads, len(words), image_tokens): row i is the decoder looking at the image while
    choosing ``words[i]``.
    """

    generation: Generation
    tokens: list[str]
    words: list[str]
    self_attention: np.ndarray
    cross_attention: np.ndarray


@dataclass
class MatchScores:
    """Retrieval scores, both (N images, M texts): ITM match probability and ITC cosine similarity."""

    itm: np.ndarray
    itc: np.ndarray


class BlipEngine(FolderEngine):
    """Runs an exported BLIP model folder (caption, vqa or itm). Build it with :meth:`from_dir`.

    Items and per-item failures work as in ClipEngine: batch methods raise PartialFailure (results
    with None for failed items) unless ``return_errors=True`` asks for ``(results, errors)``.
    """

    family = "blip"

    def __init__(self, folder: Path, manifest: Manifest, sessions: dict, max_batch: int,
                 io_binding: bool | None = None, max_image_pixels: int | None = DEFAULT_MAX_PIXELS):
        super().__init__(folder, manifest, sessions, max_batch, max_image_pixels)
        self.generation = manifest.model.get("generation", {})
        self.decoder = None
        if "decoder_step" in sessions:
            dims = manifest.model["decoder"]
            on_cuda = sessions["decoder_step"].get_providers()[0] == "CUDAExecutionProvider"
            kind = DeviceDecoder if (on_cuda if io_binding is None else io_binding) else HostDecoder
            extra = {"device": "cuda" if on_cuda else "cpu"} if kind is DeviceDecoder else {}
            self.decoder = kind(sessions["decoder_step"], sessions["cross_kv"],
                                manifest.graphs["decoder_step"].result_outputs, dims["layers"], dims["heads"],
                                dims["head_dim"], **extra)

    @classmethod
    def from_dir(cls, folder: str | os.PathLike, provider: str = "auto", threads: int | None = None,
                 max_batch: int = MAX_BATCH, verify: bool = True, io_binding: bool | None = None,
                 max_image_pixels: int | None = DEFAULT_MAX_PIXELS) -> BlipEngine:
        """Load a folder written by `clipblip export` for a BLIP model, with the graphs of its task.

        ``io_binding`` keeps the decoder's caches on the device between steps; by default it is on
        exactly when the decoder runs on CUDA. Provider, ``max_batch``, ``max_image_pixels`` and
        per-item failures work as in ClipEngine.
        """
        loaded = cls.open_folder(folder, lambda manifest: task_graphs(cls.family, manifest.tasks), provider, threads,
                                 verify)
        return cls(*loaded, max_batch, io_binding, max_image_pixels)

    def _run(self, graph: str, **feeds: np.ndarray) -> list[np.ndarray]:
        return self.sessions[graph].run(self.manifest.graphs[graph].result_outputs, feeds)

    def image_embeds(self, images: Sequence[ImageInput] | ImageInput) -> np.ndarray:
        """Images → patch tokens, float32 (N, image_tokens, width); the first unusable image raises."""
        return self._run("image_tower", pixel_values=self.preprocess(images))[0]

    def image_attentions(self, image: ImageInput) -> np.ndarray:
        """Attention weights of the image tower, float32 (layers, heads, tokens, tokens); class token first."""
        names = attention_names(self.folder, self.manifest, "image_tower")
        weights = self.sessions["image_tower"].run(names, {"pixel_values": self.preprocess([image])})
        return finite_attention(np.stack([w[0] for w in weights]), describe(image))

    def caption_attentions(self, image: ImageInput, prompt: str | None = None,
                           max_new_tokens: int = 30) -> CaptionAttention:
        """Caption one image, then replay the caption through the decoder to read its attention weights."""
        self_names = attention_names(self.folder, self.manifest, "decoder_step", "self_attentions_")
        cross_names = attention_names(self.folder, self.manifest, "decoder_step", "cross_attentions_")
        generation = self.generate_captions([image], prompt, max_new_tokens)[0]
        sequence = generation.prompt_ids + generation.token_ids
        input_ids = np.asarray([sequence[:-1]], dtype=np.int64)  # position i predicts sequence[i + 1]
        host = HostDecoder(self.sessions["decoder_step"], self.sessions["cross_kv"], [], **self.manifest.model["decoder"])
        cross = host.cross(self.image_embeds([image]))
        feeds = {"input_ids": input_ids, **dict(zip(host.past_names, host.empty_cache(1))),
                 **dict(zip(host.cross_names, cross))}
        weights = self.sessions["decoder_step"].run(self_names + cross_names, feeds)
        self_attention = np.stack([w[0] for w in weights[: len(self_names)]])  # (layers, heads, n, n)
        cross_attention = np.stack([w[0] for w in weights[len(self_names):]])  # (layers, heads, n, image_tokens)
        finite_attention(self_attention, describe(image))
        finite_attention(cross_attention, describe(image))
        first = len(generation.prompt_ids) - 1  # the position that chose the first generated word
        return CaptionAttention(generation, self.tokenizer.tokens(sequence[:-1]),
                                self.tokenizer.tokens(generation.token_ids), self_attention,
                                cross_attention[:, :, first:])

    # --- generation ----------------------------------------------------------------------------------

    def check_max_new_tokens(self, max_new_tokens: int, prompt_len: int) -> None:
        """GenerationConfigError unless 1 <= max_new_tokens and the prompt plus them fit the positions."""
        limit = int(self.generation["max_positions"])
        if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise GenerationConfigError(f"max_new_tokens={max_new_tokens!r}: must be a positive integer")
        if prompt_len + max_new_tokens > limit:
            raise GenerationConfigError(
                f"max_new_tokens={max_new_tokens}: with a {prompt_len}-token prompt this passes the model's "
                f"{limit} positions (at most {limit - prompt_len})"
            )

    def _generate(self, prompt: np.ndarray, encoder_states: np.ndarray, options: GenerationOptions,
                  rng: np.random.Generator) -> tuple[list[list[int] | None], list[float | None]]:
        """Token ids per row, or None for a row whose logits went NaN/Inf: greedy, beam search or sampling;
        and each row's beam score (None unless beam search)."""
        cross = self.decoder.cross(encoder_states)  # 2 x layers of (batch, heads, encoder_sequence, head_dim)
        ends = {"eos_id": self.generation["eos_id"], "pad_id": self.generation["pad_id"]}
        scores: list[float | None] = [None] * len(prompt)
        if options.num_beams > 1:
            out, broken, best = beam_decode(self.decoder, prompt, cross, options, **ends)
            scores = [float(b) for b in best]
        elif options.do_sample:
            out, broken = sample_decode(self.decoder, prompt, cross, options, rng=rng, **ends)
        else:
            out, broken = greedy_decode(self.decoder, prompt, cross, max_new_tokens=options.max_new_tokens,
                                        options=options, **ends)
        return [None if bad else trim(row, self.generation["eos_id"]) for row, bad in zip(out, broken)], scores

    def _each_image(self, images: list, make_prompt, encode, options: GenerationOptions,
                    return_errors: bool) -> list[Generation | None]:
        """Shared by captions and answers: per chunk, the usable images are encoded and decoded; every
        failure (image, NaN/Inf encoding or logits) becomes that item's error, under its index."""
        results: list[Generation | None] = [None] * len(images)
        errors: dict = {}
        rng = options.rng()  # one random stream per call, across chunks
        for indices, pixel_values in self.usable_images(images, errors):
            image_embeds = self._run("image_tower", pixel_values=pixel_values)[0]  # (usable, tokens, width)
            check_finite(image_embeds, indices, errors, "image encoding")
            encoder_states, prompt = encode(image_embeds, indices), make_prompt(len(indices))
            generated, scores = self._generate(prompt, encoder_states, options, rng)
            for row, (index, ids) in enumerate(zip(indices, generated)):
                if ids is None:
                    errors.setdefault(index, NumericalError(f"item {index}: next-token logits have NaN/Inf"))
                elif index not in errors:
                    prompt_ids = [int(i) for i in prompt[row]]
                    results[index] = Generation(self.tokenizer.decode(prompt_ids + ids), ids, prompt_ids, scores[row])
        return finish(results, errors, len(images), return_errors)

    def caption_prompt(self, prompt: str | None) -> list[int]:
        """Decoder prompt ids: [DEC] alone, or the prompt's ids with [CLS] → [DEC] and the final [SEP] dropped."""
        if prompt is None:
            return [self.generation["bos_id"]]
        if not isinstance(prompt, str):
            raise TextInputError(f"prompt: expected a string, got {type(prompt).__name__}")
        ids = self.tokenizer.ids([prompt])[0]
        return [self.generation["bos_id"]] + ids[1:-1]

    def generation_options(self, prompt_len: int, max_new_tokens: int | None = None,
                           **given: Any) -> GenerationOptions:
        """The decoding options of a call: each given value, else the checkpoint's own (its
        generation_config.json, recorded in the manifest; ``max_length``/``min_length`` count the prompt,
        as in transformers), else GenerationOptions' defaults (the task's max_new_tokens)."""
        unknown = set(given) - set(OPTION_NAMES)
        if unknown:
            raise TypeError(f"unknown decoding options: {', '.join(sorted(unknown))} (known: {', '.join(OPTION_NAMES)})")
        config = self.generation.get("config", {})
        settled: dict[str, Any] = {name: config[name] for name in OPTION_NAMES if name in config}
        if "max_new_tokens" in config:
            settled["max_new_tokens"] = config["max_new_tokens"]
        elif "max_length" in config:
            settled["max_new_tokens"] = config["max_length"] - prompt_len
        if "min_new_tokens" not in config and "min_length" in config:
            settled["min_new_tokens"] = max(0, config["min_length"] - prompt_len)
        settled.setdefault("max_new_tokens", self.generation["default_max_new_tokens"])
        settled.update({name: value for name, value in given.items() if value is not None})
        if max_new_tokens is not None:
            settled["max_new_tokens"] = max_new_tokens
        self.check_max_new_tokens(settled["max_new_tokens"], prompt_len)
        options = GenerationOptions(**settled)
        if unused := options.unused(name for name, value in given.items() if value is not None):
            raise GenerationConfigError(f"{', '.join(unused)}: not read by {options.mode} decoding, so "
                                        f"{'it' if len(unused) == 1 else 'they'} would be ignored; leave "
                                        f"{'it' if len(unused) == 1 else 'them'} out, or choose "
                                        f"{' or '.join(sorted({option_rules()[n].used_by for n in unused}))}")
        return options

    def generate_captions(self, images: Sequence[ImageInput] | ImageInput, prompt: str | None = None,
                          max_new_tokens: int | None = None, *, return_errors: bool = False, **options: Any):
        """Captions with their token ids (None for a failed image); with a prompt the text starts with
        the prompt. ``options`` are transformers' ``generate()`` options (GenerationOptions: num_beams,
        min_new_tokens, length_penalty, early_stopping, repetition_penalty, no_repeat_ngram_size, do_sample,
        temperature, top_k, top_p, seed), with the same tokens for beam search; unset ones come from the
        checkpoint's generation config, else greedy decoding of the task's default length. ``seed`` makes
        sampling repeatable."""
        self.require("caption")
        prompt_ids = np.asarray(self.caption_prompt(prompt), dtype=np.int64)
        settled = self.generation_options(len(prompt_ids), max_new_tokens, **options)
        return self._each_image(as_images(images), lambda n: np.tile(prompt_ids, (n, 1)),
                                lambda image_embeds, indices: image_embeds, settled, return_errors)

    def caption(self, images: Sequence[ImageInput] | ImageInput, prompt: str | None = None,
                max_new_tokens: int | None = None, **options) -> list[str]:
        """One caption per image; ``options`` as generate_captions."""
        return [g.text for g in self.generate_captions(images, prompt, max_new_tokens, **options)]

    def generate_answers(self, images: Sequence[ImageInput] | ImageInput, questions: str | Sequence[str],
                         max_new_tokens: int | None = None, *, return_errors: bool = False, **options: Any):
        """Answers with their token ids (None for a failed image); one question for all images, or one
        per image. Decoding options as generate_captions."""
        self.require("vqa")
        images = as_images(images)
        questions = [questions] * len(images) if isinstance(questions, str) else list(questions)
        if len(questions) != len(images):
            raise TextInputError(f"questions: {len(questions)} given for {len(images)} images")
        settled = self.generation_options(1, max_new_tokens, **options)

        def encode(image_embeds, indices):
            input_ids, attention_mask = self.tokenizer([questions[i] for i in indices])  # (batch, question_len)
            return self._run("question_encoder", input_ids=input_ids, attention_mask=attention_mask,
                             image_embeds=image_embeds)[0]  # (batch, question_len, width)

        return self._each_image(images, lambda n: np.full((n, 1), self.generation["bos_id"], dtype=np.int64),
                                encode, settled, return_errors)

    def answer(self, images: Sequence[ImageInput] | ImageInput, questions: str | Sequence[str],
               max_new_tokens: int | None = None, **options) -> list[str]:
        """One answer per image; ``options`` as generate_answers."""
        return [g.text for g in self.generate_answers(images, questions, max_new_tokens, **options)]

    # --- retrieval -----------------------------------------------------------------------------------

    @property
    def embed_dim(self) -> int:
        """Width of the ITC embeddings (retrieval folders)."""
        return int(self.manifest.graphs["itc_text"].outputs[0].shape[-1])

    def embed_images(self, images: Sequence[ImageInput] | ImageInput, *, return_errors: bool = False):
        """Images → ITC embeddings, float32 (N, D), L2-normalised (NaN rows for failed items); retrieval folders."""
        self.require("match")
        images = as_images(images)
        out = np.full((len(images), self.embed_dim), np.nan, dtype=np.float32)
        errors: dict = {}
        for rows, pixel_values in self.usable_images(images, errors):
            image_embeds = self._run("image_tower", pixel_values=pixel_values)[0]  # (usable, tokens, width)
            out[rows] = self._run("itc_image", image_embeds=image_embeds)[0]  # (usable, dim)
            check_finite(out[rows], rows, errors, "image embedding")
        return finish(out, errors, len(images), return_errors)

    def embed_texts(self, texts: Sequence[str] | str, *, return_errors: bool = False):
        """Texts → ITC embeddings, float32 (M, D), L2-normalised; retrieval folders."""
        self.require("match")
        texts = as_texts(texts)
        out, errors = self.text_cache.embed(texts, self._itc_text, self.embed_dim, "text embedding")
        return finish(out, errors, len(texts), return_errors)

    def _itc_text(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.embed_dim), dtype=np.float32)
        for part in batches(len(texts), self.max_batch):
            input_ids, attention_mask = self.tokenizer(texts[part])  # (batch, sequence)
            out[part] = self._run("itc_text", input_ids=input_ids, attention_mask=attention_mask)[0]
        return out

    def match(self, images: Sequence[ImageInput] | ImageInput, texts: Sequence[str] | str, *,
              return_errors: bool = False):
        """ITM match probabilities and ITC cosine similarities, each (N images, M texts); NaN rows for
        images that failed."""
        self.require("match")
        images, texts = as_images(images), as_texts(texts)
        text_batches = [(part, *self.tokenizer(texts[part])) for part in batches(len(texts), self.max_batch)]
        text_feat = self.embed_texts(texts)  # (texts, dim); a text that fails fails the call
        itm = np.full((len(images), len(texts)), np.nan, dtype=np.float32)
        itc = np.full((len(images), len(texts)), np.nan, dtype=np.float32)
        errors: dict = {}
        for indices, pixel_values in self.usable_images(images, errors):
            image_embeds = self._run("image_tower", pixel_values=pixel_values)[0]  # (usable, tokens, width)
            image_feat = self._run("itc_image", image_embeds=image_embeds)[0]  # (usable, dim)
            for row, index in enumerate(indices):
                itc[index] = image_feat[row] @ text_feat.T
                for text_part, input_ids, attention_mask in text_batches:  # (texts in part, sequence)
                    repeated = np.repeat(image_embeds[row : row + 1], len(input_ids), axis=0)  # (texts, tokens, w)
                    logits = self._run("itm_head", input_ids=input_ids, attention_mask=attention_mask,
                                       image_embeds=repeated)[0]  # (texts, 2)
                    itm[index, text_part] = softmax(logits)[:, 1]
        check_finite(np.concatenate([itm, itc], axis=1), range(len(images)), errors, "match scores")
        return finish(MatchScores(itm, itc), errors, len(images), return_errors)

    def candidate_ids(self, question: str, candidates: Sequence[str]) -> list[list[int]]:
        """Each candidate answer's token ids, checked (TextInputError, GenerationConfigError) before any work."""
        return candidate_ids(self.tokenizer, question, candidates, int(self.generation["max_positions"]))

    def rank_answers(self, images: Sequence[ImageInput] | ImageInput, question: str, candidates: Sequence[str], *,
                     return_errors: bool = False):
        """Rank candidate answers as BLIP's authors do (``inference: 'rank'``): per image a list of
        ``(candidate, score)`` best first, the score being the log-likelihood of ``[DEC] candidate [SEP]``
        teacher-forced over the question encoding (None for a failed image)."""
        self.require("vqa")
        ids = self.candidate_ids(question, candidates)  # before any work
        candidates = list(candidates)
        images = as_images(images)
        results: list[list[tuple[str, float]] | None] = [None] * len(images)
        errors: dict = {}
        ends = {f"{k}_id": int(self.generation[f"{k}_id"]) for k in ("bos", "eos", "pad")}
        for indices, pixel_values in self.usable_images(images, errors):
            image_embeds = self._run("image_tower", pixel_values=pixel_values)[0]  # (usable, tokens, width)
            check_finite(image_embeds, indices, errors, "image encoding")
            input_ids, attention_mask = self.tokenizer([question] * len(indices))  # (usable, question_len)
            question_states = self._run("question_encoder", input_ids=input_ids, attention_mask=attention_mask,
                                        image_embeds=image_embeds)[0]  # (usable, question_len, width)
            check_finite(question_states, indices, errors, "question encoding")
            for row, index in enumerate(indices):
                if index in errors:
                    continue
                scores = teacher_forced_scores(self.decoder, question_states[row : row + 1], ids,
                                               max_rows=self.max_batch * 16, **ends)  # (candidates,)
                if not np.isfinite(scores).all():
                    errors[index] = NumericalError(f"item {index}: the decoder's logits have NaN/Inf")
                    continue
                results[index] = best_first(candidates, scores)
        return finish(results, errors, len(images), return_errors)
