"""Tokenisation from the model folder's tokenizer.json with the `tokenizers` library, after the text cleaning the
manifest names (OpenCLIP's: ftfy, HTML unescaping, whitespace, lower case or canonical form)."""

from __future__ import annotations

import html
import json
import os
import string
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tokenizers import Tokenizer

from ..errors import ModelLoadError, TextInputError

__all__ = ["TextTokenizer", "CLEANING", "clean_function"]


# --- text cleaning, as open_clip's tokenizers do it before tokenising (open_clip/tokenizer.py) ---------------------

def _basic_clean(text: str) -> str:
    import ftfy  # open_clip's own first step: mojibake, full-width forms, curly quotes, NFC

    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _whitespace_clean(text: str) -> str:
    return " ".join(text.split()).strip()


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _canonicalize(text: str) -> str:
    """big_vision's canonical form (SigLIP): underscores as spaces, ASCII punctuation removed, lower case."""
    return " ".join(text.replace("_", " ").translate(_PUNCTUATION).lower().split()).strip()


# the manifest's tokenizer "clean": open_clip's three clean functions, step for step
CLEANING: dict[str, Callable[[str], str]] = {
    "open_clip:lower": lambda text: _whitespace_clean(_basic_clean(text)).lower(),
    "open_clip:whitespace": lambda text: _whitespace_clean(_basic_clean(text)),
    "open_clip:canonicalize": lambda text: _canonicalize(_basic_clean(text)),
}


def clean_function(name: str | None) -> Callable[[str], str] | None:
    """The cleaning a manifest names (None: none); ModelLoadError for one clipblip does not know."""
    if name is None:
        return None
    if name not in CLEANING:
        raise ModelLoadError(f"tokenizer clean {name!r} is not one clipblip knows ({', '.join(CLEANING)}); "
                             f"update clipblip")
    if name.startswith("open_clip:"):
        try:
            import ftfy  # noqa: F401
        except ImportError:
            raise ModelLoadError("this folder's texts are cleaned with ftfy, as open_clip does: pip install ftfy"
                                 ) from None
    return CLEANING[name]


@lru_cache(maxsize=8)
def _parsed(path: str, inode: int, size: int, mtime_ns: int, max_length: int) -> Tokenizer:
    """The tokenizer file at ``path``, parsed once per version of the file (CLIP's takes 76 ms) and set up for
    ``max_length``: engines opened again on a folder share it (its encoding only reads it)."""
    tokenizer = Tokenizer.from_file(path)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer


class TextTokenizer:
    """Encodes texts to padded id and mask arrays; truncation keeps the closing special token."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, pad_id: int, padding: str = "longest",
                 padding_side: str = "right", attention_mask: bool = True, clean: str | None = None):
        self.tokenizer = tokenizer
        self.clean = clean_function(clean)  # applied to each text before the tokenizer
        self.max_length = max_length
        self.pad_id = pad_id
        self.padding = padding  # "longest" in a batch, or every row to "max_length" (SigLIP)
        self.padding_side = padding_side
        self.attention_mask = attention_mask  # False: the model was run without a mask (all ones)
        # texts are cut to this many characters before tokenising, so a megabyte string costs nothing;
        # far more than max_length tokens ever need unless a text is mostly whitespace
        self.max_chars = max(4096, 64 * max_length)
        if tokenizer.padding is not None or (tokenizer.truncation or {}).get("max_length") != max_length:
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length)

    @classmethod
    def from_manifest(cls, folder: Path, facts: dict[str, Any]) -> TextTokenizer:
        path, max_length = folder / facts["file"], int(facts["max_length"])
        try:
            stat = os.stat(path)
            tokenizer = _parsed(str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, max_length)
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise ModelLoadError(f"{path}: cannot load tokenizer ({str(e).splitlines()[0] if str(e) else e})") from None
        made = cls(tokenizer, int(facts["max_length"]), int(facts["pad_id"]), facts.get("padding", "longest"),
                   facts.get("padding_side", "right"), bool(facts.get("attention_mask", True)), facts.get("clean"))
        made.check(facts.get("checks", []), path)
        return made

    def check(self, cases: Sequence[dict[str, Any]], where: Any) -> None:
        """ModelLoadError unless each stored case's text gives its ids here (the reference library's ids, written at
        export: a different ftfy or tokenizers here could change them)."""
        if not cases:
            return
        rows = self.ids([case["text"] for case in cases])
        for i, (case, row) in enumerate(zip(cases, rows)):
            if row != list(case["ids"]):
                raise ModelLoadError(f"{where}: tokenizer check {i} ({case['text'][:40]!r}) gives ids {row[:8]}... here, "
                                     f"not the exported {list(case['ids'])[:8]}...; this machine's ftfy or tokenizers "
                                     f"tokenise differently: install the versions the manifest's source names")

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, special tokens included, at most ``max_length`` long."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TextInputError(f"text {i}: expected a string, got {type(text).__name__}")
        capped = self._prepared(texts)
        try:
            return [encoding.ids for encoding in self.tokenizer.encode_batch(capped)]
        except Exception as e:  # the tokenizers library raises plain exceptions
            raise TextInputError(f"texts: cannot tokenise ({e})") from None

    def _prepared(self, texts: Sequence[str]) -> list[str]:
        """Texts cut to ``max_chars``, then cleaned as the manifest says."""
        capped = [str(text)[: self.max_chars] for text in texts]
        return [self.clean(text) for text in capped] if self.clean else capped

    def pad(self, rows: Sequence[Sequence[int]], multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Pad rows to the longest (or to max_length) on the model's side, that length rounded up to a ``multiple``
        (at most max_length): (input_ids, attention_mask), both int64 (batch, sequence)."""
        length = self.max_length if self.padding == "max_length" else max(len(r) for r in rows)
        length = min(-(-length // multiple) * multiple, self.max_length)
        input_ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            place = slice(length - len(row), length) if self.padding_side == "left" else slice(0, len(row))
            input_ids[i, place] = row
            attention_mask[i, place] = 1
        if not self.attention_mask:
            attention_mask[:] = 1
        return input_ids, attention_mask

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.pad(self.ids(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @cached_property
    def unknown_id(self) -> int | None:
        """The id of the tokenizer's unknown token (None when its model has none)."""
        unk_token = getattr(self.tokenizer.model, "unk_token", False)  # BPE, WordPiece, WordLevel say it
        if unk_token is not False:
            return self.tokenizer.token_to_id(unk_token) if unk_token else None
        model = json.loads(self.tokenizer.to_str()).get("model", {})  # Unigram's unk_id is in its JSON alone (1 s)
        if isinstance(model.get("unk_id"), int):  # Unigram (SentencePiece)
            return model["unk_id"]
        return self.tokenizer.token_to_id(model["unk_token"]) if model.get("unk_token") else None

    def unknown_texts(self, texts: Sequence[str]) -> list[int]:
        """Indices of the texts that hold something, yet every token of theirs (special tokens and bare word
        starts left out) is the unknown token: the model reads them all alike (SigLIP's vocabulary and Chinese)."""
        unknown = self.unknown_id
        if unknown is None or not texts:
            return []
        found = []
        for i, encoding in enumerate(self.tokenizer.encode_batch(self._prepared(texts))):
            content = [(token_id, token) for token_id, token, special in
                       zip(encoding.ids, encoding.tokens, encoding.special_tokens_mask) if not special]
            pieces = [token_id for token_id, token in content if token.strip("▁ ")]  # "▁": a word start alone
            if pieces and all(token_id == unknown for token_id in pieces):
                found.append(i)
        return found

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """Readable token strings for labels (CLIP's end-of-word marker and SentencePiece's word start dropped)."""
        return [(self.tokenizer.id_to_token(int(i)) or "?").replace("</w>", "").lstrip("▁") or "▁" for i in ids]

