"""Figure basics shared by every plot: fonts (CJK, emoji, symbols, scripts), labels, the random-weights note, images."""

from __future__ import annotations

import base64
import io
import re
import unicodedata
from functools import lru_cache
from importlib import util
from pathlib import Path

import numpy as np

__all__ = ["RANDOM_WEIGHTS_NOTE", "cjk_font", "display_label", "distinct_format", "heading", "new_figure",
           "png_bytes", "png_data_uri", "setup_fonts", "wrap_to_width"]

RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS: shows the pipeline, not what a trained model sees"
CJK_FONT_PACKAGE = "cvttf_NotoSansCJK_Regular"  # PyPI: cvttf-notosanscjk-regular (Noto Sans CJK, SIL OFL)
NOTO_FONTS_PACKAGE = "manimgx_fonts"  # PyPI: manimgx-fonts (Noto Emoji, Symbols and scripts, SIL OFL)
# From manimgx-fonts, in fallback order: monochrome emoji first (emoji DejaVu Sans lacks), then symbols, then
# the scripts DejaVu Sans lacks (random-weight BLIP captions are full of them). Latin, Greek and Cyrillic come
# from DejaVu Sans, so Noto Sans itself is not registered.
NOTO_FALLBACKS = ("NotoEmoji", "NotoSansSymbols", "NotoSansThai", "NotoSansLao", "NotoSansKhmer",
                  "NotoSansMyanmar", "NotoSansArabic", "NotoSansHebrew", "NotoSansDevanagari", "NotoSansBengali",
                  "NotoSansGurmukhi", "NotoSansGujarati", "NotoSansOriya", "NotoSansTamil", "NotoSansTelugu",
                  "NotoSansKannada", "NotoSansMalayalam", "NotoSansSinhala", "NotoSansEthiopic",
                  "NotoSansGeorgian", "NotoSansArmenian")


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    spec = util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _font_files() -> list[Path]:
    """The fallback font files that are installed, in fallback order."""
    files: list[Path] = []
    cjk = _package_dir(CJK_FONT_PACKAGE)
    if cjk is not None:
        files += sorted(cjk.glob("*.otf"))[:1]
    noto = _package_dir(NOTO_FONTS_PACKAGE)
    if noto is not None:
        for stem in NOTO_FALLBACKS:
            files += sorted(noto.glob(f"{stem}[[]*].ttf"))[:1] or sorted(noto.glob(f"{stem}.ttf"))[:1]
    return files


@lru_cache(maxsize=1)
def setup_fonts() -> tuple[str, ...]:
    """Register the fallback fonts of the `viz` extra; rcParams["font.family"] becomes DejaVu Sans then them.

    Matplotlib falls back per glyph along that list: Latin from DejaVu Sans, CJK from Noto Sans CJK, emoji from
    Noto Emoji, symbols and other scripts from Noto Sans <script>. Returns the registered family names; a missing
    font package only shortens the list.
    """
    from matplotlib import font_manager, rcParams

    names: list[str] = []
    for path in _font_files():
        try:
            font_manager.fontManager.addfont(str(path))
            name = font_manager.FontProperties(fname=str(path)).get_name()
        except (OSError, RuntimeError, ValueError):  # an unreadable font file: skip it, keep the others
            continue
        if name not in names:
            names.append(name)
    if names:
        rcParams["font.family"] = ["DejaVu Sans", *names]
    return tuple(names)


def cjk_font() -> str | None:
    """The registered Noto Sans CJK family name (None when its package is missing); sets up all fonts."""
    return next((name for name in setup_fonts() if "CJK" in name), None)


def display_label(text: str) -> str:
    """``text`` as a figure label, drawn as written: '""' when it would draw nothing (empty, spaces, zero-width
    characters only); each dollar sign escaped, so that '$x^$' is never read as (broken) mathtext."""
    text = str(text)
    invisible = all(ch.isspace() or unicodedata.category(ch) == "Cf" or "\ufe00" <= ch <= "\ufe0f" for ch in text)
    return '""' if invisible else re.sub(r"(?<!\\)\$", r"\\$", text)


def distinct_format(values, least: int = 2, most: int = 6) -> str:
    """The format (``"{:.Nf}"``) with the fewest decimals, ``least`` to ``most``, that prints values that differ
    (at ``most`` decimals) differently: 0.4557 and 0.4566 are not both "0.46"."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    distinct = len({f"{v:.{most}f}" for v in finite})
    decimals = next(d for d in range(least, most + 1) if len({f"{v:.{d}f}" for v in finite}) == distinct)
    return f"{{:.{decimals}f}}"


def new_figure(width: float, height: float):
    """A figure not tied to any GUI backend, with the fonts set up."""
    from matplotlib.figure import Figure

    setup_fonts()
    return Figure(figsize=(width, height), layout="constrained")


def png_bytes(fig, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def png_data_uri(fig, dpi: int = 110) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig, dpi)).decode("ascii")


def text_width(text: str, fontsize: float) -> float:
    """Points that one line of ``text`` takes in the figures' fonts (fallbacks included) at ``fontsize``."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer = RendererAgg(1, 1, 72)  # at 72 dpi a pixel is a point
    return renderer.get_text_width_height_descent(text, FontProperties(size=fontsize), ismath=False)[0]


def wrap_to_width(text: str, width: float, fontsize: float) -> str:
    """``text`` broken into lines of at most ``width`` points: at spaces, or inside a word longer than a line."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if text_width(trial, fontsize) <= width:
                line = trial
                continue
            if line:
                lines.append(line)
            line = ""
            for ch in word:  # a word wider than the line: cut it where it must be
                if line and text_width(line + ch, fontsize) > width:
                    lines.append(line)
                    line = ""
                line += ch
        lines.append(line)
    return "\n".join(lines)


def heading(fig, title: str | None, note: str | None = None, fontsize: float = 10) -> None:
    """The figure's title, then ``note`` (the random-weights warning, in red), each wrapped to the figure's width
    so that no narrow figure clips them."""
    width = 0.94 * fig.get_figwidth() * 72  # points, inside constrained layout's margins
    parts = [wrap_to_width(display_label(part), width, fontsize) for part in (title, note) if part]
    if parts:
        fig.suptitle("\n".join(parts), fontsize=fontsize, color="black" if note is None else "darkred")


def thumbnail(image: np.ndarray, size: int = 48) -> np.ndarray:
    """A uint8 (H, W, 3) image shrunk so its longer side is ``size``."""
    from PIL import Image

    pil = Image.fromarray(image)
    pil.thumbnail((size, size))
    return np.asarray(pil)
