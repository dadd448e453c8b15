"""The TTS protocol: text + :class:`Rendition` → :class:`Utterance` (16 kHz mono float32 audio and
one time span per whitespace token of the text).

Any backend (espeak-ng, a cloud TTS, hibari-tts, piper, recorded audio) implements
:class:`TTSBackend`; see ``docs/patterns/tts-backend.md``.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import SpeechError
from .tokens import whitespace_tokens

SAMPLE_RATE = 16_000
"""The one sample rate of every :class:`Utterance` (Hz)."""


class WordSpan(NamedTuple):
    """One whitespace token and its time span in seconds from the start of the audio.

    Unpacks as ``word, start_s, end_s``. Times are ``None`` only for a non-subject word that an
    external aligner (manifest, WhisperX) could not place.
    """

    word: str
    start_s: float | None
    end_s: float | None


@dataclass(frozen=True)
class Rendition:
    """One way of speaking a text. Several renditions of one prompt are acoustically distinct.

    Fields (defaults are espeak-ng's own):
        voice: voice / language name, e.g. ``"en-us"``, ``"en"`` (British; ``"en-gb"`` does not
            exist), ``"en-gb-x-rp"``, ``"en-gb-scotland"``, ``"en-029"``. Default ``"en-us"``.
        variant: voice variant without the ``+``, e.g. ``"m3"``, ``"f2"``, ``"klatt"``; ``None``
            for the voice's default. Default ``None``.
        rate: speaking rate in words per minute, 80–450. Default 175.
        pitch: base pitch, 0–99 (espeak-ng's scale; 50 is the voice's normal). Default 50.

    ``str(r)`` / :meth:`parse` round-trip: ``"en-us+m3:r175:p50"``.
    """

    voice: str = "en-us"
    variant: str | None = None
    rate: int = 175
    pitch: int = 50

    def __post_init__(self) -> None:
        ok_name = lambda s: bool(s) and all(c.isalnum() or c in "-_" for c in s)  # noqa: E731
        if not ok_name(self.voice):
            raise SpeechError(f"Invalid voice name {self.voice!r}.\n  expected: letters, digits, "
                              "'-' or '_' (e.g. 'en-us', 'en-gb-x-rp')\n  fix: pass the variant "
                              "separately: Rendition(voice='en-us', variant='m3')")
        if self.variant is not None and not ok_name(self.variant):
            raise SpeechError(f"Invalid voice variant {self.variant!r}.\n  expected: a name like "
                              "'m3', 'f2' or 'klatt', without '+'\n  fix: Rendition(variant='m3')")
        if not (80 <= int(self.rate) <= 450):
            raise SpeechError(f"Rate {self.rate} wpm is out of range.\n  expected: 80–450 words "
                              "per minute (default 175)\n  fix: pick a rate in range")
        if not (0 <= int(self.pitch) <= 99):
            raise SpeechError(f"Pitch {self.pitch} is out of range.\n  expected: 0–99 (default 50)"
                              "\n  fix: pick a pitch in range")

    @property
    def voice_name(self) -> str:
        """The name espeak-ng's ``SetVoiceByName`` takes: ``voice[+variant]``."""
        return self.voice + (f"+{self.variant}" if self.variant else "")

    def __str__(self) -> str:
        return f"{self.voice_name}:r{self.rate}:p{self.pitch}"

    @classmethod
    def parse(cls, text: str) -> "Rendition":
        """Inverse of ``str()``; ``"en-gb-x-rp"`` or ``"en-us+f2:r150"`` work too."""
        head, *opts = text.strip().split(":")
        voice, _, variant = head.partition("+")
        kw: dict = {"voice": voice, "variant": variant or None}
        for opt in opts:
            if opt[:1] == "r" and opt[1:].isdigit():
                kw["rate"] = int(opt[1:])
            elif opt[:1] == "p" and opt[1:].isdigit():
                kw["pitch"] = int(opt[1:])
            else:
                raise SpeechError(f"Cannot parse rendition option {opt!r} in {text!r}.\n"
                                  "  expected: 'voice[+variant][:rRATE][:pPITCH]', e.g. "
                                  "'en-us+m3:r175:p50'\n  fix: correct the rendition string")
        return cls(**kw)


@dataclass(frozen=True)
class Utterance:
    """A synthesised (or recorded) utterance.

    Fields:
        text: the text spoken, exactly as passed in.
        audio: mono float32 samples at :data:`SAMPLE_RATE` (16 kHz), shape ``(n,)``.
        words: one :class:`WordSpan` per whitespace token of ``text``, in order. The espeak-ng
            backend's spans end where each word's speech ends (:mod:`.trim`), so consecutive
            words may leave gaps (pauses); ``start == end`` marks a token that is not spoken.
        rendition: the :class:`Rendition` used (``None`` for recordings).
        backend: backend name and version, e.g. ``"espeak-ng 1.52.0 / lalm-espeak 2"``.
        estimated: indices of words whose start was split from a neighbour's by character
            counts (no WORD or phoneme event to place it; espeak-ng: none in practice).
        sample_rate: always 16000 (Hz).
    """

    text: str
    audio: np.ndarray = field(repr=False)
    words: tuple[WordSpan, ...]
    rendition: Rendition | None = None
    backend: str = ""
    estimated: tuple[int, ...] = ()
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if self.sample_rate != SAMPLE_RATE:
            raise SpeechError(f"Utterance for {self.text!r} has sample rate {self.sample_rate} Hz."
                              f"\n  expected: {SAMPLE_RATE} Hz\n  fix: resample with "
                              "lalm_interp.speech.tts.resample(audio, rate)")
        a = self.audio
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 1:
            raise SpeechError(f"Utterance audio for {self.text!r} must be a 1-D float32 array, "
                              f"got {type(a).__name__} {getattr(a, 'dtype', '')} "
                              f"{getattr(a, 'shape', '')}.\n  expected: mono float32 in [-1, 1]\n"
                              "  fix: average channels and convert with .astype(np.float32)")
        n_tok = len(whitespace_tokens(self.text))
        if len(self.words) != n_tok:
            raise SpeechError(f"Utterance for {self.text!r} has {len(self.words)} word spans for "
                              f"{n_tok} whitespace tokens.\n  expected: one span per token\n"
                              "  fix: map the backend's timings with speech.tokens.events_to_spans")

    @property
    def duration_s(self) -> float:
        """Length of the audio in seconds."""
        return len(self.audio) / self.sample_rate


@runtime_checkable
class TTSBackend(Protocol):
    """What a TTS backend provides. ``version`` enters the benchmark's content hash: change it
    whenever the same (text, rendition) would sound different."""

    name: str

    @property
    def version(self) -> str: ...

    def synthesize(self, text: str, rendition: Rendition) -> Utterance: ...


def synthesize_many(
    backend: TTSBackend,
    requests: Sequence[tuple[str, Rendition]],
    *,
    workers: int = 1,
) -> Iterator[tuple[int, Utterance | SpeechError]]:
    """Synthesise many ``(text, rendition)`` pairs; yield ``(index, utterance or error)`` in
    completion order. Uses the backend's own ``synthesize_many`` when it has one (espeak-ng's runs
    forked workers); otherwise calls ``synthesize`` in a loop. A failing request yields a
    :class:`SpeechError` (any other exception from the backend is wrapped in one) and never stops
    the others. ``KeyboardInterrupt`` still stops everything."""
    own = getattr(backend, "synthesize_many", None)
    if own is not None:
        yield from own(requests, workers=workers)
        return
    for i, (text, rendition) in enumerate(requests):
        try:
            yield i, backend.synthesize(text, rendition)
        except SpeechError as err:
            yield i, err
        except Exception as err:  # a third-party backend's own error: one item, not the build
            yield i, SpeechError(
                f"TTS backend {getattr(backend, 'name', type(backend).__name__)!r} failed for "
                f"{text!r} ({rendition}): {type(err).__name__}: {err}.\n  expected: an Utterance "
                "or a SpeechError\n  fix: see the backend's documentation; raise SpeechError "
                "for bad requests (docs/patterns/tts-backend.md)")


def check_text(text: str) -> None:
    """Raise :class:`SpeechError` unless ``text`` is speakable by an English TTS: non-empty, no
    control/format/private characters, no emoji or other symbols, letters in Latin script only."""
    if not isinstance(text, str) or not text.strip():
        raise SpeechError(f"Empty text {text!r}.\n  expected: at least one word\n"
                          "  fix: drop the item or fill in its prompt")
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        bad = None
        if ch in "\n\r\t":
            bad = "a line break or tab"
        elif cat[0] == "C":
            bad = f"a control/format character (category {cat})"
        elif cat == "So":
            bad = "a symbol (emoji, pictograph)"
        elif cat[0] == "L" and not unicodedata.name(ch, "").startswith("LATIN"):
            bad = f"a non-Latin letter ({unicodedata.name(ch, 'unnamed')})"
        if bad:
            raise SpeechError(
                f"Unsupported character {ch!r} (U+{ord(ch):04X}) at position {i} of {text!r}: "
                f"{bad}.\n  expected: Latin letters, digits, punctuation and single spaces\n"
                "  fix: transliterate or drop the item")


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    """Resample mono ``audio`` at ``rate`` Hz to 16 kHz float32 (polyphase, scipy)."""
    from math import gcd

    from scipy.signal import resample_poly

    x = np.asarray(audio, dtype=np.float64)
    if rate == SAMPLE_RATE:
        return x.astype(np.float32)
    g = gcd(SAMPLE_RATE, int(rate))
    return resample_poly(x, SAMPLE_RATE // g, int(rate) // g).astype(np.float32)
