"""Figure basics shared by every plot: fonts (CJK included), the random-weights note, image helpers."""

from __future__ import annotations

import base64
import io
from functools import lru_cache
from importlib import util
from pathlib import Path

import numpy as np

__all__ = ["RANDOM_WEIGHTS_NOTE", "cjk_font", "new_figure", "png_bytes", "png_data_uri"]

RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS: shows the pipeline, not what a trained model sees"
CJK_FONT_PACKAGE = "cvttf_NotoSansCJK_Regular"  # PyPI: cvttf-notosanscjk-regular (Noto Sans CJK, SIL OFL)


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """Register Noto Sans CJK (installed with the `viz` extra) as matplotlib's fallback font; its name."""
    from matplotlib import font_manager, rcParams

    spec = util.find_spec(CJK_FONT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    fonts = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.otf"))
    if not fonts:
        return None
    font_manager.fontManager.addfont(str(fonts[0]))
    name = font_manager.FontProperties(fname=str(fonts[0])).get_name()
    rcParams["font.family"] = ["DejaVu Sans", name]  # per-glyph fallback: Latin from DejaVu, CJK from Noto
    return name


def new_figure(width: float, height: float):
    """A figure not tied to any GUI backend, with the fonts set up."""
    from matplotlib.figure import Figure

    cjk_font()
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
