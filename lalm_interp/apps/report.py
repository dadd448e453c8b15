"""Self-contained HTML reports: images and audio embedded as data URIs, no network, no scripts
from elsewhere — a results folder's ``index.html`` opens anywhere, offline.

Numbers are rounded for reading (:func:`fmt`); tables may carry a caption; the page is written
atomically with ordinary permissions (``0o666 & ~umask``, like ``open()``), so it can be shared.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import write_bytes

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; white-space: nowrap; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; } figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.9em; } code, pre { background: #f6f6f6; padding: 1px 4px; }
.note { color: #555; font-size: 0.9em; }
caption { caption-side: bottom; text-align: left; color: #555; font-size: 0.88em; padding-top: 0.4em; max-width: 1000px; }
p.found { background: #f7f9fc; border-left: 4px solid #4a7bd0; padding: 0.6em 1em; }
"""


def image_data_uri(path: str | Path) -> str:
    data = Path(path).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def wav_data_uri(audio: np.ndarray, sample_rate: int = 16000) -> str:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(audio, dtype=np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass
class Section:
    """One section of a report: a title, free HTML (already escaped), figures, a table, audio."""

    title: str
    html: str = ""
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (png path, caption)
    table: tuple[Sequence[str], Sequence[Sequence[object]]] | None = None
    audio: list[tuple[np.ndarray, str]] = field(default_factory=list)  # (samples, caption)
    caption: str = ""  # the table's caption (plain text; escaped)


def fmt(v: object, digits: int = 2) -> str:
    """A number as a reader wants it: floats rounded to ``digits`` decimals (``63.422758`` →
    ``63.42``), integers as they are, NaN / None as an en dash."""
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "–" if not np.isfinite(v) else f"{float(v):.{digits}f}"
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], caption: str = "") -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for r in rows:
        cells = []
        for v in r:
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
                cells.append(f'<td class="num">{fmt(v)}</td>')
            else:
                cells.append(f"<td>{html.escape(fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<tr>{th}</tr>{''.join(body)}</table>"


def kv_table(items: Sequence[tuple[str, object]]) -> str:
    """A small two-column table (name, value) — for run facts instead of a JSON dump."""
    return _table(["", ""], [[k, v] for k, v in items]).replace("<tr><th></th><th></th></tr>", "", 1)


def render(title: str, sections: Sequence[Section], *, intro: str = "", found: str = "") -> str:
    """The page: title, a "What we found" paragraph (``found``, plain text, escaped), the intro
    (HTML), then the sections."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if found:
        parts.append(f"<p class='found' id='found'><b>What we found.</b> {html.escape(found)}</p>")
    if intro:
        parts.append(f"<p>{intro}</p>")
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.html:
            parts.append(s.html)
        for samples, caption in s.audio:
            parts.append(f"<figure><audio controls src='{wav_data_uri(samples)}'></audio>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        if s.table is not None:
            parts.append(_table(*s.table, caption=s.caption))
        for path, caption in s.figures:
            parts.append(f"<figure><img src='{image_data_uri(path)}' alt='{html.escape(caption)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "".join(parts)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` atomically with ordinary permissions (:func:`lalm_interp.atomic.write_bytes`)."""
    path = Path(path)
    write_bytes(path, text.encode("utf-8"), durable=False)
    return path


def write(path: str | Path, title: str, sections: Sequence[Section], *, intro: str = "", found: str = "") -> Path:
    """Render and write atomically (temp file + rename), readable as any file the user writes."""
    return write_text(path, render(title, sections, intro=intro, found=found))
