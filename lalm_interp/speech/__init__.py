"""Spoken prompts: TTS backends behind one protocol, word timings, and aligners.

- :mod:`.tts` — the :class:`TTSBackend` protocol, :class:`Rendition`, :class:`Utterance`.
- :mod:`.espeak` — the default offline backend (espeak-ng through ctypes, fork per utterance).
- :mod:`.tokens` — whitespace tokens and the event → token mapping.
- :mod:`.aligners` — TTS events, WhisperX, and user manifests (CSV / JSON / TextGrid).
"""

from __future__ import annotations

from .errors import AlignerUnavailable, AlignmentError, SpeechError
from .tts import SAMPLE_RATE, Rendition, TTSBackend, Utterance, WordSpan, check_text

__all__ = [
    "SAMPLE_RATE", "Rendition", "TTSBackend", "Utterance", "WordSpan", "check_text",
    "SpeechError", "AlignmentError", "AlignerUnavailable", "EspeakBackend", "DEFAULT_RENDITIONS",
]


def __getattr__(name: str):  # lazy: importing the package must not load libespeak-ng
    if name in ("EspeakBackend", "DEFAULT_RENDITIONS"):
        from . import espeak

        return getattr(espeak, name)
    raise AttributeError(name)
