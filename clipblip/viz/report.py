"""A self-contained HTML report: figures embedded as PNG data URIs, no network needed to view it."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from .style import RANDOM_WEIGHTS_NOTE, png_data_uri

__all__ = ["Section", "write_report"]

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.banner { background: #fde2e1; border: 2px solid #b00; color: #800; padding: 0.8em 1em; font-weight: bold; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; } table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; } code { background: #f4f4f4; }
"""


@dataclass
class Section:
    """A heading, lines of text (HTML-escaped), and (caption, Figure) pairs."""

    heading: str
    lines: list[str] = field(default_factory=list)
    figures: list[tuple[str, object]] = field(default_factory=list)


def write_report(path: str | Path, *, title: str, sources: dict[str, str], random_weights: bool,
                 sections: list[Section], timings: dict[str, float], timings_note: str = "") -> Path:
    """Write the report to ``path`` (temporary file + rename) and return the path."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if random_weights:
        parts.append(f"<p class='banner'>{html.escape(RANDOM_WEIGHTS_NOTE)}. The models below were exported "
                     "from random-weight presets because no trained checkpoint was available offline.</p>")
    parts.append("<h2>Models</h2><table><tr><th>model</th><th>source</th></tr>")
    parts += [f"<tr><td>{html.escape(k)}</td><td><code>{html.escape(v)}</code></td></tr>" for k, v in sources.items()]
    parts.append("</table>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        if section.lines:
            parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in section.lines) + "</ul>")
        for caption, fig in section.figures:
            parts.append(f"<figure><img alt='{html.escape(caption)}' src='{png_data_uri(fig)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("<h2>Timings</h2>" + (f"<p>{html.escape(timings_note)}</p>" if timings_note else "")
                 + "<table><tr><th>stage</th><th>seconds</th></tr>")
    parts += [f"<tr><td>{html.escape(k)}</td><td>{v:.2f}</td></tr>" for k, v in timings.items()]
    parts.append("</table>")
    # Marks the page once every image has decoded, so a headless browser can check that all render.
    parts.append("<script>window.addEventListener('load', () => { const imgs = [...document.images]; "
                 "document.body.dataset.imagesRendered = imgs.filter(i => i.complete && i.naturalWidth > 0).length "
                 "+ '/' + imgs.length; });</script></body></html>")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path
