"""Self-contained HTML reports: images and audio embedded as data URIs, no network, no scripts
from elsewhere — a results folder's ``index.html`` opens anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; } td, th { border: 1px solid #ccc; padding: 3px 9px; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; } figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.9em; } code, pre { background: #f6f6f6; padding: 1px 4px; }
.note { color: #555; font-size: 0.9em; }
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


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for r in rows:
        cells = []
        for v in r:
            if isinstance(v, float):
                cells.append(f'<td class="num">{v:.2f}</td>')
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{th}</tr>{''.join(body)}</table>"


def render(title: str, sections: Sequence[Section], *, intro: str = "") -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
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
            parts.append(_table(*s.table))
        for path, caption in s.figures:
            parts.append(f"<figure><img src='{image_data_uri(path)}' alt='{html.escape(caption)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "".join(parts)


def write(path: str | Path, title: str, sections: Sequence[Section], *, intro: str = "") -> Path:
    """Render and write atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render(title, sections, intro=intro)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path
