"""Plots of causal-tracing results (matplotlib, PNG + PDF).

* :func:`plot_aie` — the paper's Figure-2 style: AIE vs layer, one panel per (stream, kind), one
  line per word position (first/last subject word, last word, last token), each with a bootstrap
  95 % band over examples (fixed seed); n and the restoration window are in the titles. Line styles
  and markers differ per position, so two curves that coincide stay visible.
* :func:`plot_heatmap` — ROME-style layer × position heatmap of one example (its result as
  ``trace_example`` / ``lalm_interp.interventions.results.read_example`` give it). Signed effects use a
  diverging map centred on 0 (white = no effect); the subject span (the corrupted one) is boxed.
  Audio stream: frames labelled by spoken word; text stream: positions labelled with readable
  decoded tokens — the chat template grouped into ``<system prompt>`` / ``<user>`` / ``<assistant>``
  runs, the audio tokens by the word they carry, the instruction by words, the last position on its
  own.
* :func:`plot_heatmap_over_spectrogram` — a layer × time heatmap drawn over the clip's log-mel
  spectrogram with word boundaries and the subject span marked (for the demo page).

Each ``plot_*`` has a ``*_figure`` twin returning the open matplotlib figure (tests inspect it).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import xarray as xr

from ..interventions.results import as_result

SPAN_LABELS = {
    "first_subject_word": "first subject word",
    "last_subject_word": "last subject word",
    "last_word": "last word",
    "last_token": "last token",
    "subject": "subject",
    "subject_mean": "subject (mean)",
}

SPAN_STYLES: dict[str, dict[str, Any]] = {
    "first_subject_word": dict(ls="--", marker="o", mfc="none", color="tab:blue"),
    "last_subject_word": dict(ls="-", marker="s", color="tab:red"),
    "last_word": dict(ls=":", marker="^", color="tab:green"),
    "last_token": dict(ls="-.", marker="D", mfc="none", color="tab:purple"),
}
"""Line style, marker and colour per word position: dashed/open vs solid/filled, so the first and
last subject word stay distinguishable where they coincide (one-word subjects)."""

_OTHER_STYLES = [dict(ls=(0, (5, 1, 1, 1)), marker="v"), dict(ls=(0, (1, 2)), marker="x"),
                 dict(ls=(0, (3, 1)), marker="P")]

DIVERGING_CMAP = "RdBu_r"
"""Signed effects: red positive, blue negative, white at 0."""

N_BOOT = 1000
BOOT_SEED = 0


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


# ---------------------------------------------------------------------------------------- numbers
def bootstrap_ci(values: np.ndarray, *, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                 level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over axis 0 (examples), NaNs ignored.

    ``values``: (n_examples, ...). Returns ``(lo, hi)`` with the trailing shape. With one example
    the interval collapses to the value itself. Deterministic for a given ``seed``."""
    v = np.asarray(values, dtype=float)
    n = v.shape[0]
    if n == 0:
        nan = np.full(v.shape[1:], np.nan)
        return nan, nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices (layers a stream lacks)
        means = np.nanmean(v[idx], axis=1)  # (n_boot, ...)
        lo = np.nanpercentile(means, 100 * (1 - level) / 2, axis=0)
        hi = np.nanpercentile(means, 100 * (1 + level) / 2, axis=0)
    return lo, hi


def symmetric_limit(grid: np.ndarray) -> float:
    """The colour limit ``m`` of a diverging map: ``vmin = -m, vmax = m`` (largest |value|)."""
    g = np.asarray(grid, dtype=float)
    m = float(np.nanmax(np.abs(g))) if np.isfinite(g).any() else 0.0
    return m if m > 0 else 1e-6


def _diverging_norm(grid: np.ndarray):
    from matplotlib.colors import TwoSlopeNorm

    m = symmetric_limit(grid)
    return TwoSlopeNorm(vcenter=0.0, vmin=-m, vmax=m)


# ---------------------------------------------------------------------------------------- windows
def _families_of_experiment(attrs: dict) -> dict[str, dict[str, Any]]:
    raw = attrs.get("experiment")
    if not raw:
        return {}
    try:
        doc = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError):
        return {}
    out = {}
    for r in doc.get("restores", []):
        at = str(r.get("at", ""))
        parts = at.split("@")[0].split(".")
        comp = ".".join(parts[3:]) if len(parts) > 3 and parts[1] == "layers" else ".".join(parts[1:])
        label = r.get("name") or f"{parts[0]}.{comp}"
        out[label] = r
    return out


def window_of(ds: "xr.Dataset | xr.DataTree", family: str) -> int | None:
    """The restoration window of ``family``: the window actually used when the results record it
    (``attrs['window_used']``: an int, or ``{family: {"used": w, ...}}`` / ``{family: w}``, also as
    JSON), else the requested ``Restore.window`` from ``attrs['experiment']``."""
    wu = ds.attrs.get("window_used", ds.attrs.get("window"))
    if isinstance(wu, (bytes, str)):
        try:
            wu = json.loads(wu)
        except ValueError:
            wu = None
    if isinstance(wu, (int, np.integer)):
        return int(wu)
    if isinstance(wu, dict) and family in wu:
        v = wu[family]
        if isinstance(v, dict):
            v = v.get("used", v.get("requested"))
        if v is not None:
            return int(v)
    r = _families_of_experiment(ds.attrs).get(family)
    return int(r["window"]) if r and "window" in r else None


# ---------------------------------------------------------------------------------------- AIE
def _style(span: str, k: int) -> dict[str, Any]:
    return dict(SPAN_STYLES.get(span) or _OTHER_STYLES[k % len(_OTHER_STYLES)])


def aie_figure(agg: xr.Dataset, *, title: str | None = None, band: bool = True):
    """The AIE-vs-layer figure (open); see :func:`plot_aie`."""
    plt = _mpl()
    fams = [str(f) for f in agg["family"].values if np.isfinite(agg["aie"].sel(family=f).values).any()]
    streams = list(dict.fromkeys(str(agg["stream"].sel(family=f).values) for f in fams)) or ["-"]
    kinds = list(dict.fromkeys(str(agg["kind"].sel(family=f).values) for f in fams)) or ["-"]
    fig, axes = plt.subplots(len(streams), len(kinds), figsize=(4.4 * len(kinds), 3.4 * len(streams)),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    has_ie = "ie" in agg and "example" in agg["ie"].dims
    legend: dict[str, Any] = {}
    for fam in fams:
        stream = str(agg["stream"].sel(family=fam).values)
        kind = str(agg["kind"].sel(family=fam).values)
        ax = axes[streams.index(stream), kinds.index(kind)]
        ax.set_visible(True)
        sub = agg["aie"].sel(family=fam)
        ns = []
        drawn: dict[str, np.ndarray] = {}
        for k, span in enumerate(map(str, agg["span"].values)):
            y = sub.sel(span=span).values
            ok = np.isfinite(y)
            if not ok.any():
                continue
            layers = agg["layer"].values[ok]
            st = _style(span, k)
            same = [o for o, yo in drawn.items() if yo.shape == y.shape and np.allclose(yo, y, equal_nan=True)]
            if has_ie:
                per_ex = agg["ie"].sel(family=fam, span=span).values  # (example, layer)
                ns.append(int(np.isfinite(per_ex).any(axis=1).sum()))
                if band and ns[-1] > 1 and not same:
                    lo, hi = bootstrap_ci(per_ex)
                    ax.fill_between(layers, lo[ok], hi[ok], color=st.get("color"), alpha=0.13, lw=0)
            label = SPAN_LABELS.get(span, span)
            # a curve equal to one already drawn goes on top, thinner, so both stay visible
            if same:  # hollow, larger markers and a thin line on top: the curve underneath shows through
                st = {**st, "mfc": "none"}
            line, = ax.plot(layers, y[ok], ms=8 if same else 4, lw=1.0 if same else 1.6, label=label,
                            zorder=3 if same else 2, **st)
            if same:
                note = f"{label} (= {SPAN_LABELS.get(same[0], same[0])} here)"
                ax.annotate(note, xy=(0.02, 0.97), xycoords="axes fraction", va="top", fontsize=7,
                            color=st.get("color"))
            legend.setdefault(label, line)
            drawn[span] = y
        w = window_of(agg, fam)
        head = f"{stream} · {kind}" + ("" if fam == f"{stream}.{kind}" else f" ({fam})")
        extra = [f"window {w}" if w is not None else "", f"n={max(ns)}" if ns else ""]
        ax.set_title(head + "".join(f", {e}" for e in extra if e), fontsize=9)
        ax.set_xlabel(f"{stream} layer (centre of the window)")
        ax.set_ylabel("AIE  (P_restored − P_corrupt)")
        ax.axhline(0, color="0.6", lw=0.8)
    n_ex = agg.sizes.get("example", 0)
    if title is None:
        title = (f"Average indirect effect over n={n_ex} examples (shaded: bootstrap 95% over examples); "
                 f"P_clean {float(agg['p_clean'].mean()):.3f}, P_corrupt {float(agg['p_corrupt'].mean()):.3f}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07 if legend else 0, 1, 1))
    if legend:
        fig.legend(list(legend.values()), list(legend.keys()), loc="lower center", ncol=len(legend), fontsize=8,
                   frameon=False)
    return fig


def plot_aie(agg: xr.Dataset, stem: str | Path, *, title: str | None = None) -> list[Path]:
    """AIE-vs-layer curves (span-mode families), one panel per family, with bootstrap 95 % bands
    over examples (seed ``BOOT_SEED``), n and the window in the titles. Returns the written paths."""
    plt = _mpl()
    fig = aie_figure(agg, title=title)
    paths = _save(fig, Path(stem))
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------- labels
_SPECIAL = re.compile(r"<\|[^|>]*\|>\Z|<[a-z_]+>\Z|</s>\Z|<s>\Z")


def _byte_decoder() -> dict[str, int]:
    try:
        from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
    except ImportError:  # pragma: no cover - transformers is a dependency
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
            list(range(ord("®"), ord("ÿ") + 1))
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        return {chr(c): b for b, c in zip(bs, cs)}
    return {v: k for k, v in bytes_to_unicode().items()}


_BYTES: dict[str, int] | None = None


def readable_token(token: str, tokenizer: Any = None) -> str:
    """A token string as text: special tokens unchanged, byte-level BPE symbols decoded
    (``"Ġom"`` → ``" om"``, ``"Ċ"`` → ``"\\n"``), SentencePiece's ``▁`` as a space. With a
    ``tokenizer``, its own ``convert_tokens_to_string`` decides."""
    global _BYTES
    token = str(token)
    if _SPECIAL.match(token):
        return token
    if tokenizer is not None and hasattr(tokenizer, "convert_tokens_to_string"):
        try:
            return str(tokenizer.convert_tokens_to_string([token]))
        except Exception:  # noqa: BLE001 - fall back to the byte-level table
            pass
    if _BYTES is None:
        _BYTES = _byte_decoder()
    if all(c in _BYTES for c in token):
        return bytes(_BYTES[c] for c in token).decode("utf-8", errors="replace")
    return token.replace("▁", " ")


def text_position_groups(tokens: Sequence[str], is_audio: Sequence[bool], words: Sequence[str],
                         decode: Callable[[str], str] = readable_token) -> list[tuple[int, int, str]]:
    """Readable label runs ``(start, stop, label)`` covering every decoder position.

    Chat-template turns before the audio become one run each (``<system prompt>``, ``<user>``),
    audio tokens are grouped by the spoken word they carry (``(silence)`` between words), the text
    after the audio by whitespace-separated words, special tokens by turn markers, and the last
    position (where the answer is read) is its own run labelled ``last token``."""
    L = len(tokens)
    dec = [decode(str(t)) for t in tokens]
    special = [bool(_SPECIAL.match(str(t))) for t in tokens]
    audio = [j for j in range(L) if bool(is_audio[j])]
    groups: list[list[Any]] = []  # [start, stop, label]

    def add(j: int, label: str, new: bool) -> None:
        if new or not groups or groups[-1][2] != label or groups[-1][1] != j:
            groups.append([j, j + 1, label])
        else:
            groups[-1][1] = j + 1

    def role_at(j: int) -> tuple[str, int]:
        """The role name after an ``<|im_start|>`` at j, and the index after its newline."""
        text, k = "", j + 1
        while k < L and "\n" not in dec[k] and not special[k]:
            text += dec[k]
            k += 1
        return text.strip(), min(k + 1, L)

    def turn_label(role: str) -> str:
        return "<system prompt>" if role == "system" else f"<{role or 'turn'}>"

    def text_region(a: int, b: int) -> None:
        j = a
        current: str | None = None
        while j < b:
            t = str(tokens[j])
            if "im_start" in t:
                role, k = role_at(j)
                lab = turn_label(role)
                groups.append([j, min(k, b), lab])
                current = lab if role == "system" else None
                j = min(k, b)
                continue
            if current is not None and "im_end" not in t:  # inside the system turn: one run
                add(j, current, False)
                j += 1
                continue
            if special[j]:
                name = t.strip("<|>")
                lab = {"im_end": "<end of turn>", "audio_bos": "<audio>", "audio_eos": "</audio>"}.get(name, t)
                current = None if "im_end" in t else current
                add(j, lab, True)
                j += 1
                continue
            d = dec[j]
            if not d.strip():  # whitespace / newline: joins the run before it
                if groups and groups[-1][1] == j:
                    groups[-1][1] = j + 1
                else:
                    add(j, "⏎" if "\n" in d else "␣", True)
                j += 1
                continue
            starts_word = d[:1].isspace() or not groups or groups[-1][1] != j or \
                groups[-1][2].startswith("<") or groups[-1][2].endswith(("⏎", ":"))
            if starts_word:
                add(j, d.strip(), True)
            else:
                groups[-1][1] = j + 1
                groups[-1][2] = groups[-1][2] + d.strip()
            j += 1

    if audio:
        a0, a1 = audio[0], audio[-1] + 1
        text_region(0, a0)
        for j in range(a0, a1):
            w = str(words[j]) if j < len(words) else ""
            add(j, w or "(silence)", False)
        text_region(a1, L)
    else:
        text_region(0, L)
    # the last position on its own
    if L and groups:
        g = groups[-1]
        if g[1] - g[0] > 1:
            g[1] -= 1
            groups.append([L - 1, L, "last token"])
        else:
            g[2] = f"last token {g[2]}".strip()
    return [(int(a), int(b), str(lab)) for a, b, lab in groups]


def _span_runs(mask: Sequence[bool]) -> list[tuple[int, int]]:
    runs, start = [], None
    for j, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = j
        elif not m and start is not None:
            runs.append((start, j))
            start = None
    return runs


def _corrupt_label(ds: "xr.Dataset | xr.DataTree") -> str:
    """The boxed span's label: the subject, and which part of it ``Corrupt.span`` noised."""
    try:
        c = json.loads(ds.attrs.get("experiment", "{}")).get("corrupt", {})
    except (TypeError, ValueError):
        c = {}
    span = c.get("span", "subject")
    span = span if isinstance(span, str) else f"words {span}"
    if span == "subject":
        return "corrupted subject"
    return f"subject (corrupted: {SPAN_LABELS.get(span, span)})"  # the box still marks the whole subject


def _mark_span(ax: Any, mask: Sequence[bool], n_rows: int, label: str) -> None:
    from matplotlib.patches import Rectangle

    for k, (a, b) in enumerate(_span_runs(mask)):
        ax.add_patch(Rectangle((a - 0.5, -0.5), b - a, n_rows, fill=False, ec="black", lw=1.6, ls="--",
                               label=label if k == 0 else None, gid="subject-span"))
        if k == 0:
            ax.annotate(label, xy=((a + b - 1) / 2, n_rows - 0.5), xytext=(0, -2), textcoords="offset points",
                        ha="center", va="top", fontsize=7, bbox=dict(fc="white", ec="none", alpha=0.8, pad=1))


# ---------------------------------------------------------------------------------------- heatmaps
def heatmap_figure(result: "xr.DataTree | xr.Dataset", family: str, *, tokenizer: Any = None):
    """The layer × position heatmap figure (open); see :func:`plot_heatmap`. ``result``: one
    example's result (``trace_example``, ``read_example``; a format-2 Dataset is converted)."""
    plt = _mpl()
    res = as_result(result)
    node = res[family]
    da = node["ie"].transpose("layer", "position")
    grid = np.asarray(da.values, dtype=float)
    fig, ax = plt.subplots(figsize=(min(16, 3 + 0.1 * grid.shape[1]), 2.4 + 0.32 * grid.shape[0]))
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap=DIVERGING_CMAP, norm=_diverging_norm(grid),
                   interpolation="nearest")
    if "token" in node.coords:
        toks = [str(t) for t in node["token"].values]
        words = [str(w) for w in node["word"].values] if "word" in node.coords else [""] * len(toks)
        is_audio = node["is_audio"].values if "is_audio" in node.coords else [bool(w) for w in words]
        groups = text_position_groups(toks, is_audio, words, lambda t: readable_token(t, tokenizer))
        ax.set_xticks([(a + b - 1) / 2 for a, b, _ in groups])
        ax.set_xticklabels([lab for _, _, lab in groups], rotation=60, ha="right", fontsize=7)
        for a, _, _ in groups[1:]:
            ax.axvline(a - 0.5, color="0.85", lw=0.5)
        ax.set_xlabel("decoder position (chat template grouped; audio tokens labelled by spoken word)")
    elif "word" in node.coords:
        words = [str(w) for w in node["word"].values]
        groups = [(a, b, lab) for a, b, lab in _runs(words)]
        ax.set_xticks([(a + b - 1) / 2 for a, b, _ in groups])
        ax.set_xticklabels([lab or "(silence)" for _, _, lab in groups], rotation=45, ha="right", fontsize=7)
        for a, _, _ in groups[1:]:
            ax.axvline(a - 0.5, color="0.85", lw=0.5)
        ax.set_xlabel("audio frame (labelled by spoken word)")
    if "is_subject" in node.coords:
        _mark_span(ax, node["is_subject"].values.astype(bool), grid.shape[0], _corrupt_label(res))
    ax.set_ylabel("layer")
    ax.set_yticks(range(grid.shape[0]))
    ax.set_yticklabels([str(v) for v in node["layer"].values])
    fig.colorbar(im, ax=ax, label="IE (P_restored − P_corrupt); white = 0")
    w = window_of(res, family)
    ax.set_title(f"{res.attrs.get('example', '')}: “{res.attrs.get('words', '')}” → {res.attrs.get('target', '')} "
                 f"({family}{f', window {w}' if w is not None else ''})", fontsize=9)
    fig.tight_layout()
    return fig


def _runs(labels: Sequence[str]) -> list[tuple[int, int, str]]:
    out: list[list[Any]] = []
    for j, lab in enumerate(labels):
        if out and out[-1][2] == lab:
            out[-1][1] = j + 1
        else:
            out.append([j, j + 1, lab])
    return [(a, b, lab) for a, b, lab in out]


def plot_heatmap(result: "xr.DataTree | xr.Dataset", family: str, stem: str | Path, *,
                 tokenizer: Any = None) -> list[Path]:
    """Layer × position heatmap of one example's each-mode family (diverging map centred on 0,
    subject span boxed, readable position labels). For a quick look, xarray's own
    ``result[family].ie.plot()`` draws the same grid without the labels."""
    plt = _mpl()
    fig = heatmap_figure(result, family, tokenizer=tokenizer)
    paths = _save(fig, Path(stem))
    plt.close(fig)
    return paths


def spectrogram_figure(result: "xr.DataTree | xr.Dataset", family: str, audio: np.ndarray, *,
                       sample_rate: int = 16000):
    """The heatmap-over-spectrogram figure (open); see :func:`plot_heatmap_over_spectrogram`."""
    plt = _mpl()
    from scipy.signal import spectrogram

    ds = as_result(result)
    node = ds[family]
    da = node["ie"].transpose("layer", "position")
    times = np.asarray(node["time_s"].values, dtype=float)
    grid = np.asarray(da.values, dtype=float)
    dur = len(audio) / sample_rate
    f, t, S = spectrogram(audio, fs=sample_rate, nperseg=400, noverlap=240)
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(10, 5.2), sharex=True, gridspec_kw={"height_ratios": [1, 1.3]})
    ax0.pcolormesh(t, f / 1000, 10 * np.log10(S + 1e-10), shading="auto", cmap="magma")
    ax0.set_ylabel("kHz")
    step = (times[1] - times[0]) if len(times) > 1 else 0.02
    extent = [times[0] - step / 2, times[-1] + step / 2, -0.5, grid.shape[0] - 0.5]
    im = ax1.imshow(grid, aspect="auto", origin="lower", cmap=DIVERGING_CMAP, norm=_diverging_norm(grid),
                    extent=extent, interpolation="nearest")
    ax1.set_ylabel("layer")
    ax1.set_xlabel("time (s)")
    starts = np.atleast_1d(ds.attrs.get("word_start_s", []))
    ends = np.atleast_1d(ds.attrs.get("word_end_s", []))
    words = str(ds.attrs.get("words", "")).split()
    for ax in (ax0, ax1):
        for s in starts:
            ax.axvline(float(s), color="0.3" if ax is ax1 else "cyan", lw=0.8, ls="--")
    for w, s, e in zip(words, starts, ends):
        ax0.text((float(s) + float(e)) / 2, ax0.get_ylim()[1] * 0.92, w, ha="center", va="top", color="white",
                 fontsize=8, bbox=dict(facecolor="black", alpha=0.4, pad=1, lw=0))
    if "is_subject" in node.coords:
        label = _corrupt_label(ds)
        mask = node["is_subject"].values.astype(bool)
        for k, (a, b) in enumerate(_span_runs(mask)):
            t0, t1 = times[a] - step / 2, times[b - 1] + step / 2
            ax0.axvspan(t0, t1, ymin=0, ymax=0.04, color="white", gid="subject-span")
            from matplotlib.patches import Rectangle

            ax1.add_patch(Rectangle((t0, -0.5), t1 - t0, grid.shape[0], fill=False, ec="black", lw=1.6, ls="--",
                                    gid="subject-span", label=label if k == 0 else None))
            if k == 0:
                ax1.annotate(label, xy=((t0 + t1) / 2, grid.shape[0] - 0.5), xytext=(0, -2),
                             textcoords="offset points", ha="center", va="top", fontsize=7,
                             bbox=dict(fc="white", ec="none", alpha=0.8, pad=1))
    ax1.set_xlim(0, dur)
    fig.colorbar(im, ax=[ax0, ax1], label="IE (P_restored − P_corrupt); white = 0", shrink=0.6)
    w = window_of(ds, family)
    ax0.set_title(f"“{ds.attrs.get('words', '')}” → {ds.attrs.get('target', '')}: {family}"
                  f"{f', window {w}' if w is not None else ''}", fontsize=9)
    return fig


def plot_heatmap_over_spectrogram(result: "xr.DataTree | xr.Dataset", family: str, audio: np.ndarray,
                                  stem: str | Path, *, sample_rate: int = 16000) -> list[Path]:
    """An audio-stream each-mode heatmap (layer × frame) drawn over the clip's log-mel spectrogram,
    aligned in time, with word boundaries and the (corrupted) subject span marked."""
    plt = _mpl()
    fig = spectrogram_figure(result, family, audio, sample_rate=sample_rate)
    paths = _save(fig, Path(stem))
    plt.close(fig)
    return paths
