"""Reading audio files for the speech subsystem: 16 kHz mono float32 or a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import SpeechError
from .tts import SAMPLE_RATE


def load_audio(path: str | Path, *, key: str = "", expected_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read ``path`` as mono float32 at ``expected_rate`` Hz. Multi-channel audio is averaged.

    Raises :class:`SpeechError` naming ``key`` (the item or utterance id) for a missing, corrupt or
    unreadable file and for a sample-rate mismatch (never resamples silently)."""
    import soundfile as sf

    who = f" for {key!r}" if key else ""
    p = Path(path)
    if not p.is_file():
        raise SpeechError(f"Audio file {str(p)!r}{who} does not exist.\n  expected: a readable "
                          "WAV/FLAC/OGG file\n  fix: check the manifest's path (relative paths are "
                          "resolved against the manifest's folder)")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError / others
        raise SpeechError(f"Cannot read audio file {str(p)!r}{who}: {err}.\n  expected: a valid "
                          "WAV/FLAC/OGG file\n  fix: re-export the recording, or drop the item"
                          ) from None
    if rate != expected_rate:
        raise SpeechError(f"Audio file {str(p)!r}{who} is {rate} Hz.\n  expected: {expected_rate} "
                          "Hz mono\n  fix: resample it first, e.g. with "
                          "lalm_interp.speech.tts.resample(audio, rate) or `sox in.wav -r 16000 "
                          "out.wav`")
    if data.shape[0] == 0:
        raise SpeechError(f"Audio file {str(p)!r}{who} is empty.\n  expected: at least one "
                          "sample\n  fix: re-export the recording")
    return np.ascontiguousarray(data.mean(axis=1, dtype=np.float64).astype(np.float32))
