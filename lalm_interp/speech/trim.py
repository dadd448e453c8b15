"""Word spans end where speech ends: trim the silence at both edges of each word, by energy.

The TTS's word events give each word's *onset*; a word then "ends" where the next one begins, so
its span would hold any pause after it (a comma, a sentence break, the silence before a stop
consonant's burst). This module trims every word to the speech inside it.

The rule (one rule for every clip, :func:`trim_word_spans`):

- the *level* of sample ``n`` of a word is the RMS of the ``window_s`` (10 ms) of the word's audio
  centred on it (the window is cut at the word's edges, so the next word's onset is not heard), in
  dB relative to the clip's loudest 10 ms window;
- a sample is *speech* when its level is at least ``floor_db`` (default -60 dB);
- each word ``[s, e)`` becomes ``[start of its first speech run, end of its last speech run)``,
  counting only runs of at least ``min_run_s`` (15 ms): a shorter run at a word's edge is the
  previous word's decay spilling a few ms past the word event, not this word's speech (without
  such a run, the first/last speech sample counts); a word with no speech sample keeps its span
  (nothing to anchor a trim on), and a zero-length word (a token the TTS does not speak) is left
  as it is.

Why -60 dB: over 200 espeak-ng clips, 10 ms levels are bimodal: digital silence (below -200 dB),
resampler and fade ramps (-160 to -70 dB, under 1 % of windows) and speech (-60 dB and up, 97 % of
it above -40 dB). See ``docs/gotchas/frame-rates.md``. Trimmed spans are sub-intervals of the
untrimmed ones, so they stay ordered and never overlap; the centred window puts each edge at most
``window_s / 2`` outside the word's first/last non-silent sample.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_FLOOR_DB = -60.0
"""Samples whose 10 ms level is below this (dB re the clip's loudest 10 ms) are silence."""

DEFAULT_WINDOW_S = 0.010
"""Length of the RMS window, seconds."""

DEFAULT_MIN_RUN_S = 0.015
"""A word's speech starts with the first run of speech samples at least this long (and ends with
the last such run); shorter runs at its edges are the neighbour's decay spilling past the word
event (measured: up to ~5 ms of -55 dB audio, a 10-15 ms run once windowed)."""


def _mean_square(x: np.ndarray, w: int) -> np.ndarray:
    """Mean square of the ``w``-sample window centred on each sample of ``x``; windows are cut at
    the ends of ``x`` (and averaged over the samples they hold)."""
    c = np.concatenate([[0.0], np.cumsum(x * x)])
    lo = np.clip(np.arange(x.size) - w // 2, 0, x.size)
    hi = np.clip(np.arange(x.size) - w // 2 + w, 0, x.size)
    return np.maximum(c[hi] - c[lo], 0.0) / np.maximum(hi - lo, 1)


def level_db(audio: np.ndarray, sample_rate: int, window_s: float = DEFAULT_WINDOW_S,
             reference: float | None = None) -> np.ndarray:
    """Per-sample level: RMS of the ``window_s`` window centred on each sample (cut at the ends of
    ``audio``), in dB relative to ``reference`` (an RMS; default: the loudest window of ``audio``,
    0 dB). Silence is -300 dB."""
    x = np.asarray(audio, dtype=np.float64)
    if x.size == 0:
        return np.zeros(0)
    ms = _mean_square(x, max(1, int(round(window_s * sample_rate))))
    peak = ms.max() if reference is None else float(reference) ** 2
    if peak <= 0:
        return np.full(x.size, -300.0)
    return 10 * np.log10(np.maximum(ms / peak, 1e-30))


def peak_rms(audio: np.ndarray, sample_rate: int, window_s: float = DEFAULT_WINDOW_S) -> float:
    """RMS of the loudest ``window_s`` window of the clip (the 0 dB reference)."""
    x = np.asarray(audio, dtype=np.float64)
    if x.size == 0:
        return 0.0
    return float(np.sqrt(_mean_square(x, max(1, int(round(window_s * sample_rate)))).max()))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``[start, stop)`` index runs of True in ``mask``."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def trim_word_spans(audio: np.ndarray, spans: Sequence[tuple[float, float]], sample_rate: int, *,
                    floor_db: float = DEFAULT_FLOOR_DB, window_s: float = DEFAULT_WINDOW_S,
                    min_run_s: float = DEFAULT_MIN_RUN_S) -> tuple[tuple[float, float], ...]:
    """Each ``(start_s, end_s)`` span trimmed to the speech inside it (rule in the module doc).
    Levels are measured on each word's own samples (windows cut at its edges), so the onset of the
    next word never counts as speech of this one."""
    x = np.asarray(audio, dtype=np.float64)
    ref = peak_rms(x, sample_rate, window_s)
    n = x.size
    out = []
    for s, e in spans:
        if not e > s or ref <= 0:
            out.append((float(s), float(e)))
            continue
        a = min(n, max(0, int(round(s * sample_rate))))
        b = min(n, max(a, int(round(e * sample_rate))))
        runs = _runs(level_db(x[a:b], sample_rate, window_s, reference=ref) >= floor_db)
        if not runs:
            out.append((float(s), float(e)))
            continue
        long = [r for r in runs if r[1] - r[0] >= min_run_s * sample_rate] or runs
        s2 = max(float(s), (a + long[0][0]) / sample_rate)
        e2 = min(float(e), (a + long[-1][1]) / sample_rate)
        out.append((s2, e2) if e2 > s2 else (float(s), float(e)))
    return tuple(out)
