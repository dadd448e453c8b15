"""Reading and checking audio: any common file → mono float32 at the rate you ask for, or a clear error.

* :func:`load_audio` (exported as ``lalm_interp.load_audio``) reads WAV / FLAC / OGG (Vorbis,
  Opus) / MP3 and every other format libsndfile reads, mixes down to mono (mean of the channels)
  and resamples to ``sr`` Hz (default 16 kHz, the rate of every shipped adapter) with
  :func:`resample` (polyphase, ``scipy.signal.resample_poly``).
* :func:`check_samples` is the one place bad sample values are judged: NaN and ±inf are errors
  (with their count and the time of the first); samples beyond ±1 in a file are **kept
  unchanged** and reported by an :class:`AudioClippingWarning` with their count and the peak (the
  models' feature extractors take any amplitude; only the benchmark store, whose FLAC clips
  cannot hold them, refuses them — see docs/errors/audio-input.md).

Errors are :class:`~lalm_interp.errors.AudioInputError` (also ``ValueError``) naming the file
(and ``key``, the item or utterance id) and the fix.
"""

from __future__ import annotations

import warnings
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AudioInputError
from .tts import SAMPLE_RATE

FORMATS = ("WAV", "FLAC", "OGG", "MP3")
"""The formats documented and tested (libsndfile reads more: AIFF, CAF, W64, …)."""


class AudioClippingWarning(UserWarning):
    """Samples beyond ±1: kept as they are; the message gives their count and the peak."""


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """``x`` (1-D) resampled from ``from_rate`` to ``to_rate`` Hz with a polyphase anti-aliasing
    filter (``scipy.signal.resample_poly``, Kaiser window); float32. Equal rates return ``x``.
    The output has ``ceil(len(x) * to_rate / from_rate)`` samples."""
    from_rate, to_rate = _rate(from_rate, "from_rate"), _rate(to_rate, "to_rate")
    if from_rate == to_rate:
        return np.asarray(x, dtype=np.float32)
    from scipy.signal import resample_poly

    g = gcd(from_rate, to_rate)
    y = resample_poly(np.asarray(x, dtype=np.float64), to_rate // g, from_rate // g)
    return y.astype(np.float32)


def _rate(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
        raise AudioInputError(f"{what}={value!r} is not a sample rate.\n  expected: a positive "
                              "integer number of samples per second, e.g. 16000 or 44100\n  fix: "
                              "pass the rate the audio was recorded at")
    return int(value)


def check_samples(x: np.ndarray, sample_rate: int, *, name: str = "audio", warn_over: bool = False) -> None:
    """Raise :class:`AudioInputError` for NaN or infinite samples (count, first time, fix). With
    ``warn_over`` (files: :func:`load_audio`), warn (:class:`AudioClippingWarning`) with the count
    and the peak when samples exceed ±1. Arrays beyond ±1 pass silently: nothing clips them."""
    finite = np.isfinite(x)
    if not finite.all():
        n_nan = int(np.isnan(x).sum())
        n_inf = int(x.size - finite.sum() - n_nan)
        first = int(np.flatnonzero(~finite)[0])
        kinds = " and ".join(k for k in (f"{n_nan} NaN" if n_nan else "",
                                         f"{n_inf} infinite" if n_inf else "") if k)
        raise AudioInputError(
            f"{name}: audio contains {kinds} sample(s) of {x.size} (first at sample {first}, "
            f"{first / sample_rate:.3f} s).\n  expected: finite float samples\n  fix: the file or "
            "the step that made it is broken (a failed decode, a division by zero); re-export "
            "it, or replace the bad samples, e.g. np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)")
    over = np.abs(x) > 1.0
    if warn_over and over.any():
        peak = float(np.abs(x).max())
        warnings.warn(
            f"{name}: {int(over.sum())} of {x.size} samples exceed ±1 (peak {peak:.3g}); they are "
            "kept unchanged, not clipped. Normalise the recording if that is not intended "
            f"(x / {peak:.3g}, or `sox in.wav out.wav gain -n -1`).", AudioClippingWarning,
            stacklevel=3)


def load_audio(path: str | Path, sr: int = SAMPLE_RATE, *, key: str = "") -> np.ndarray:
    """Read an audio file as mono float32 samples at ``sr`` Hz.

    Args:
        path: a WAV, FLAC, OGG (Vorbis/Opus) or MP3 file (anything libsndfile reads).
        sr: the sample rate to return, in Hz. Default 16000 (every shipped adapter's rate). A file
            at another rate is resampled with :func:`resample` (polyphase filter).
        key: an item or utterance id to name in error messages.

    Multi-channel audio is mixed down (mean of the channels). Integer PCM is scaled to [-1, 1].
    Raises :class:`~lalm_interp.errors.AudioInputError` for a missing, unreadable or empty file
    and for NaN / infinite samples; warns (:class:`AudioClippingWarning`) with the count and the
    peak when float samples exceed ±1 (they are kept, not clipped).

    Example::

        from lalm_interp import load_audio
        x = load_audio("my_clip.mp3")            # 16 kHz mono float32
        x44 = load_audio("my_clip.wav", sr=44100)
    """
    import soundfile as sf

    sr = _rate(sr, "sr")
    who = f" for {key!r}" if key else ""
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise AudioInputError(f"Audio file {str(p)!r}{who} {what}.\n  expected: a readable "
                              f"{'/'.join(FORMATS)} file\n  fix: check the path (a manifest's "
                              "relative paths are resolved against the manifest's folder)")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError / others
        raise AudioInputError(f"Cannot read audio file {str(p)!r}{who}: {err}.\n  expected: a "
                              f"valid {'/'.join(FORMATS)} file\n  fix: re-export the recording "
                              "(e.g. `sox in.xyz out.wav`), or drop the item") from None
    if data.shape[0] == 0:
        raise AudioInputError(f"Audio file {str(p)!r}{who} is empty (0 samples).\n  expected: "
                              "at least one sample\n  fix: re-export the recording")
    mono = data.mean(axis=1, dtype=np.float64).astype(np.float32)
    name = f"{str(p)!r}{who}"
    check_samples(mono, rate, name=name, warn_over=True)
    return np.ascontiguousarray(resample(mono, rate, sr))


TOOLKIT_RATE = 16000
"""The rate of the audio the toolkit itself makes: benchmark clips, :func:`lalm_interp.load_audio`'s
output, corpus utterances and the toolkit's TTS. Not a default: a raw array given to
:func:`build_inputs`, :class:`~lalm_interp.tracing.causal.SpokenPrompt` or ``trace_example`` needs
its rate stated (``sample_rate=``), or the call raises :class:`AudioInputError`."""

RATE_HINT = ("pass sample_rate=<the clip's rate in Hz>; lalm_interp.load_audio(path) returns 16 kHz "
             "audio and benchmark items carry their rate (item.sample_rate)")


def require_rates(sample_rate: Any, n: int, *, arg: str = "sample_rate", where: str = "") -> None:
    """Raise :class:`AudioInputError` when ``n`` raw sample arrays come without their rate
    (``sample_rate`` is ``None``, or a list holding ``None``): the rate of an array cannot be read
    from its samples, and guessing 16 kHz silently stretches or squeezes other recordings."""
    if isinstance(sample_rate, (list, tuple)):
        missing = sum(r is None for r in sample_rate)
    else:
        missing = n if sample_rate is None else 0
    if missing:
        hint = RATE_HINT.replace("sample_rate=", f"{arg}=", 1)
        raise AudioInputError(
            f"{where}{missing} raw sample array(s) given without {arg}; the rate of an array cannot be "
            f"read from its samples and is never guessed. Fix: {hint}.")
