"""Figure basics shared by every plot: fonts (CJK, emoji, symbols, scripts), labels, the random-weights note, images."""

from __future__ import annotations

import base64
import io
import unicodedata
from functools import lru_cache
from importlib import util
from pathlib import Path

import numpy as np

__all__ = ["RANDOM_WEIGHTS_NOTE", "cjk_font", "display_label", "new_figure", "png_bytes", "png_data_uri",
           "setup_fonts"]

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
    """``text`` as a figure label; '""' when it would draw nothing (empty, spaces, zero-width characters only)."""
    text = str(text)
    invisible = all(ch.isspace() or unicodedata.category(ch) == "Cf" or "\ufe00" <= ch <= "\ufe0f" for ch in text)
    return '""' if invisible else text


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


def title_with_note(ax, title: str, note: str | None) -> None:
    ax.set_title(title if note is None else f"{title}\n{note}", fontsize=9,
                 color="black" if note is None else "darkred")


def thumbnail(image: np.ndarray, size: int = 48) -> np.ndarray:
    """A uint8 (H, W, 3) image shrunk so its longer side is ``size``."""
    from PIL import Image

    pil = Image.fromarray(image)
    pil.thumbnail((size, size))
    return np.asarray(pil)
