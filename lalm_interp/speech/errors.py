"""Errors of the speech subsystem (docs page ``docs/errors/speech.md``)."""

from __future__ import annotations

from ..errors import LalmInterpError


class SpeechError(LalmInterpError, ValueError):
    """Text that cannot be spoken, a voice that does not exist, a TTS backend that fails."""

    page = "speech"


class AlignmentError(SpeechError):
    """Word times that are missing, malformed, or do not fit the text they should align."""


class AlignerUnavailable(SpeechError, ImportError):
    """An optional aligner (WhisperX) whose package or model is not installed."""
