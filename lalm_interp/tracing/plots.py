"""Plots of causal-tracing results (matplotlib, PNG + PDF).

* :func:`plot_aie` — the paper's Figure-2 style: AIE vs layer, one panel per (stream, kind), one
  line per word position (first/last subject word, last word, last token).
* :func:`plot_heatmap` — ROME-style layer × position heatmap of one example, the spoken words on
  the x axis (audio stream: frames labelled by word; text stream: tokens).
* :func:`plot_heatmap_over_spectrogram` — a layer × time heatmap drawn over the clip's log-mel
  spectrogram with word boundaries marked (for the demo page).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

SPAN_LABELS = {
    "first_subject_word": "first subject word",
    "last_subject_word": "last subject word",
    "last_word": "last word",
    "last_token": "last token",
    "subject": "subject",
}


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, stem: Path) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=120, bbox_inches="tight")
    return paths


def plot_aie(agg: xr.Dataset, stem: str | Path, *, title: str | None = None) -> list[Path]:
    """AIE-vs-layer curves (span-mode families), one panel per family. Returns the written paths."""
    plt = _mpl()
    fams = [str(f) for f in agg["family"].values if np.isfinite(agg["aie"].sel(family=f).values).any()]
    streams = list(dict.fromkeys(str(agg["stream"].sel(family=f).values) for f in fams)) or ["-"]
    kinds = list(dict.fromkeys(str(agg["kind"].sel(family=f).values) for f in fams)) or ["-"]
    fig, axes = plt.subplots(len(streams), len(kinds), figsize=(4.2 * len(kinds), 3.2 * len(streams)),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for fam in fams:
        stream = str(agg["stream"].sel(family=fam).values)
        kind = str(agg["kind"].sel(family=fam).values)
        ax = axes[streams.index(stream), kinds.index(kind)]
        ax.set_visible(True)
        sub = agg["aie"].sel(family=fam)
        for span in agg["span"].values:
            y = sub.sel(span=span).values
            if not np.isfinite(y).any():
                continue
            layers = agg["layer"].values[np.isfinite(y)]
            ax.plot(layers, y[np.isfinite(y)], marker="o", ms=3, label=SPAN_LABELS.get(str(span), str(span)))
        ax.set_title(f"{stream} · {kind}" + ("" if fam == f"{stream}.{kind}" else f" ({fam})"))
        ax.set_xlabel(f"{stream} layer")
        ax.set_ylabel("AIE  (P_restored − P_corrupt)")
        ax.axhline(0, color="0.7", lw=0.8)
        ax.legend(fontsize=7)
    n_ex = agg.sizes.get("example", 0)
    fig.suptitle(title or f"Average indirect effect over {n_ex} examples "
                 f"(P_clean {float(agg['p_clean'].mean()):.3f}, P_corrupt {float(agg['p_corrupt'].mean()):.3f})",
                 fontsize=10)
    fig.tight_layout()
    paths = _save(fig, Path(stem))
    plt.close(fig)
    return paths


def _ticks(labels: list[str]) -> tuple[list[int], list[str]]:
    """One tick at the first position of each run of equal non-empty labels."""
    pos, text = [], []
    prev = None
    for j, lab in enumerate(labels):
        if lab and lab != prev:
            pos.append(j)
            text.append(lab)
        prev = lab
    return pos, text


def plot_heatmap(ds: xr.Dataset, family: str, stem: str | Path) -> list[Path]:
    """Layer × position heatmap of one example's each-mode family."""
    plt = _mpl()
    da = ds[f"ie:{family}"]
    grid = da.values
    fig, ax = plt.subplots(figsize=(min(14, 2 + 0.08 * grid.shape[1]), 2 + 0.3 * grid.shape[0]))
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="Purples", interpolation="nearest")
    if f"word:{family}" in ds.coords and f"token:{family}" not in ds.coords:
        labels = [str(w) for w in ds[f"word:{family}"].values]
        pos, text = _ticks(labels)
        ax.set_xticks(pos)
        ax.set_xticklabels(text, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("audio frame (labelled by spoken word)")
    elif f"token:{family}" in ds.coords:
        toks = [str(t) for t in ds[f"token:{family}"].values]
        words = [str(w) for w in ds[f"word:{family}"].values]
        labels = [w if w else t for w, t in zip(words, toks)]
        pos, text = _ticks(labels)
        ax.set_xticks(pos)
        ax.set_xticklabels(text, rotation=60, ha="right", fontsize=6)
        ax.set_xlabel("LLM position (audio positions labelled by spoken word)")
    ax.set_ylabel("layer")
    ax.set_yticks(range(grid.shape[0]))
    ax.set_yticklabels([str(v) for v in ds[f"layer:{family}"].values])
    fig.colorbar(im, ax=ax, label="IE")
    ax.set_title(f"{ds.attrs.get('example', '')}: “{ds.attrs.get('words', '')}” → {ds.attrs.get('target', '')} ({family})",
                 fontsize=9)
    paths = _save(fig, Path(stem))
    plt.close(fig)
    return paths


def plot_heatmap_over_spectrogram(ds: xr.Dataset, family: str, audio: np.ndarray, stem: str | Path,
                                  *, sample_rate: int = 16000) -> list[Path]:
    """An audio-stream each-mode heatmap (layer × frame) drawn over the clip's log-mel spectrogram,
    aligned in time, with word boundaries marked."""
    plt = _mpl()
    from scipy.signal import spectrogram

    da = ds[f"ie:{family}"]
    times = np.asarray(ds[f"time_s:{family}"].values, dtype=float)
    grid = da.values
    dur = len(audio) / sample_rate
    f, t, S = spectrogram(audio, fs=sample_rate, nperseg=400, noverlap=240)
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, gridspec_kw={"height_ratios": [1, 1.3]})
    ax0.pcolormesh(t, f / 1000, 10 * np.log10(S + 1e-10), shading="auto", cmap="magma")
    ax0.set_ylabel("kHz")
    step = (times[1] - times[0]) if len(times) > 1 else 0.02
    extent = [times[0] - step / 2, times[-1] + step / 2, -0.5, grid.shape[0] - 0.5]
    im = ax1.imshow(grid, aspect="auto", origin="lower", cmap="Purples", extent=extent, interpolation="nearest")
    ax1.set_ylabel("layer")
    ax1.set_xlabel("time (s)")
    starts = np.atleast_1d(ds.attrs.get("word_start_s", []))
    ends = np.atleast_1d(ds.attrs.get("word_end_s", []))
    words = str(ds.attrs.get("words", "")).split()
    for ax in (ax0, ax1):
        for s in starts:
            ax.axvline(float(s), color="cyan", lw=0.8, ls="--")
    for w, s, e in zip(words, starts, ends):
        ax0.text((float(s) + float(e)) / 2, ax0.get_ylim()[1] * 0.92, w, ha="center", va="top", color="white",
                 fontsize=8, bbox=dict(facecolor="black", alpha=0.4, pad=1, lw=0))
    ax1.set_xlim(0, dur)
    fig.colorbar(im, ax=[ax0, ax1], label="IE", shrink=0.6)
    ax0.set_title(f"“{ds.attrs.get('words', '')}” → {ds.attrs.get('target', '')}: {family}", fontsize=9)
    paths = _save(fig, Path(stem))
    plt.close(fig)
    return paths
