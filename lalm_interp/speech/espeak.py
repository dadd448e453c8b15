"""espeak-ng through ctypes: the default, offline TTS backend.

The library comes from the PyPI package ``espeakng-loader`` (``libespeak-ng.so`` + its data);
without it, the system's ``libespeak-ng.so.1`` is used. Word times come from the synth callback's
WORD events (``audio_position`` in ms; ``text_position`` 1-based, in characters of the text).

Determinism: repeated syntheses in one process drift (lengths ±1 %, word starts ±10 ms), so every
utterance is synthesised in a freshly forked child of a parent that loaded the library but never
synthesised. That output is bit-exact. See ``docs/gotchas/tts-determinism.md``.

Post-processing rule (the same for every utterance): 22,050 Hz int16 → float32 in [-1, 1) →
16 kHz (``scipy.signal.resample_poly``, 320/441) → clipped to [-1, 1] (the resampler's ringing
can overshoot full scale by a few samples; benchmark clips were always stored clipped, so stored
clips are unchanged) → trailing silence trimmed (everything after the
last sample with ``|x| > trim_threshold``, but never earlier than ``min_last_word_s`` after the last
word's onset) → word spans from the WORD and PHONEME events (:func:`.tokens.events_to_spans`; a word
espeak-ng speaks together with its neighbour starts at its first phoneme) → each word trimmed to the
speech inside it (:mod:`.trim`: 10 ms level below ``word_floor_db`` re the clip's peak is silence),
so a word ends where its speech ends, not where the next word begins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import difflib
import multiprocessing as mp
import multiprocessing.connection
import os
import time
from collections import deque
from typing import Iterator, Sequence

import numpy as np

from .errors import SpeechError
from .tokens import events_to_spans, whitespace_tokens
from .trim import DEFAULT_FLOOR_DB, trim_word_spans
from .tts import SAMPLE_RATE, Rendition, Utterance, WordSpan, check_text, resample

SCHEME_VERSION = 3
"""Bump when post-processing changes; part of :attr:`EspeakBackend.version` (content hashes).
2: phoneme-derived starts for words without their own WORD event; word spans trimmed to speech.
3: espeak-ng's own random generator (the breath noise of variants such as ``f2`` and ``f5``) is
seeded with :data:`RAND_SEED` in every child; espeak-ng seeds it with ``time(NULL)``, so those
voices differed between runs (docs/gotchas/tts-determinism.md)."""

RAND_SEED = 0
"""The seed of espeak-ng's random generator (``espeak_ng_SetRandSeed``) for every utterance."""

DEFAULT_RENDITIONS: tuple[Rendition, ...] = (
    Rendition("en-us"),
    Rendition("en", variant="m3"),
    Rendition("en-gb-scotland", rate=160),
    Rendition("en-029", variant="m1", rate=190),
    Rendition("en-gb-x-rp", variant="m2", pitch=40),
    Rendition("en-us", variant="f2", rate=165, pitch=60),
    Rendition("en-us-nyc", variant="m5", rate=200),
    Rendition("en", variant="f4", rate=150, pitch=55),
)
"""A palette of acoustically distinct renditions; a benchmark with N renditions takes the first N."""

_WORD, _END, _PHONEME, _LIST_TERMINATED = 1, 5, 7, 0
_INITIALIZE_PHONEME_EVENTS = 0x0001
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3
_EE_NOT_FOUND = 2


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_void_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


def _find_library(library: str | None, data_path: str | None) -> tuple[str, str | None]:
    if library is not None:
        return library, data_path
    try:
        import espeakng_loader

        return espeakng_loader.get_library_path(), data_path or espeakng_loader.get_data_path()
    except (ImportError, RuntimeError):
        pass
    found = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    return found, data_path


class EspeakBackend:
    """espeak-ng via ctypes, one forked child per utterance (bit-exact).

    Args:
        library: path of ``libespeak-ng.so``; default: the ``espeakng-loader`` package's copy,
            else the system's ``libespeak-ng.so.1``.
        data_path: the ``espeak-ng-data`` folder; default: the loader's (or the library's own).
        timeout_s: per-utterance limit for a child, seconds. Default 60.
        trim_threshold: trailing samples with ``|x|`` at or below this are trimmed. Default 1e-3
            (-60 dBFS).
        min_last_word_s: the trimmed audio never ends earlier than this after the last word's
            onset, seconds. Default 0.05.
        word_floor_db: each word span is trimmed to the samples whose 10 ms level is at least this
            many dB re the clip's loudest 10 ms (:mod:`lalm_interp.speech.trim`). Default -60.0;
            ``None`` keeps the untrimmed spans (a word then ends where the next begins).
    """

    name = "espeak-ng"

    def __init__(self, library: str | None = None, data_path: str | None = None, *,
                 timeout_s: float = 60.0, trim_threshold: float = 1e-3,
                 min_last_word_s: float = 0.05, word_floor_db: float | None = DEFAULT_FLOOR_DB):
        path, self.data_path = _find_library(library, data_path)
        try:
            self._lib = ctypes.CDLL(path)
        except OSError as err:
            raise SpeechError(
                f"Cannot load the espeak-ng library from {path!r}: {err}.\n"
                "  expected: the PyPI package espeakng-loader, or a system libespeak-ng.so.1\n"
                "  fix: pip install espeakng-loader (or apt-get install libespeak-ng1)") from None
        self.library = path
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        # espeak_ng_Initialize seeds the generator with time(NULL); we reseed it (bit-exact breath noise)
        self._set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._set_seed is not None:
            self._set_seed.argtypes = [ctypes.c_long]
            self._set_seed.restype = None
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p,
                                     ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        self.timeout_s = float(timeout_s)
        self.trim_threshold = float(trim_threshold)
        self.min_last_word_s = float(min_last_word_s)
        self.word_floor_db = None if word_floor_db is None else float(word_floor_db)
        self._lib_version = (lib.espeak_Info(None) or b"?").decode()
        self._voices: tuple[str, ...] | None = None

    # -- identity ---------------------------------------------------------------------------
    @property
    def version(self) -> str:
        """``"espeak-ng <lib version> / lalm-espeak <scheme>"``; enters content hashes. A library
        without ``espeak_ng_SetRandSeed`` is marked `` unseeded``: its breath-noise voices (f2, f5, ...)
        differ between runs, and its clips never mix with seeded ones."""
        trim = "" if self.word_floor_db == DEFAULT_FLOOR_DB else f" words>{self.word_floor_db}dB"
        seeded = "" if self._set_seed is not None else " unseeded"
        return f"espeak-ng {self._lib_version} / lalm-espeak {SCHEME_VERSION}{trim}{seeded}"

    def __repr__(self) -> str:
        return f"EspeakBackend({self.library!r}, version={self.version!r})"

    # -- in the child -----------------------------------------------------------------------
    def _init(self) -> int:
        data = self.data_path.encode() if self.data_path else None
        # phoneme events only add events to the callback; the audio is bit-identical
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_PHONEME_EVENTS)
        if rate <= 0:
            raise SpeechError(f"espeak_Initialize failed (returned {rate}) with data path "
                              f"{self.data_path!r}.\n  expected: a readable espeak-ng-data folder"
                              "\n  fix: reinstall espeakng-loader or pass data_path=")
        if self._set_seed is not None:  # a library without it is marked in `version` (" unseeded")
            self._set_seed(RAND_SEED)
        return rate

    def _raw(self, text: str, rendition: Rendition) -> dict:
        """Synthesise in *this* process. Returns ``audio`` (int16), ``events`` (WORD events:
        1-based char, ms), ``rate`` (Hz), ``phonemes`` (PHONEME events: ms, name) and ``counts``
        (phonemes of each whitespace token spoken alone; ``None`` when the library cannot tell)."""
        lib = self._lib
        rate = self._init()
        chunks: list[np.ndarray] = []
        events: list[tuple[int, int]] = []
        phonemes: list[tuple[int, str]] = []

        def on_audio(wav, n, ev):  # noqa: ANN001
            if n > 0 and wav:
                chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            i = 0
            while ev[i].type != _LIST_TERMINATED:
                if ev[i].type == _WORD:
                    events.append((ev[i].text_position, ev[i].audio_position))
                elif ev[i].type == _PHONEME:
                    phonemes.append((ev[i].audio_position, ev[i].id.string.decode("utf-8", "replace")))
                i += 1
            return 0

        cb = _CALLBACK(on_audio)
        lib.espeak_SetSynthCallback(cb)
        if lib.espeak_SetVoiceByName(rendition.voice_name.encode()) != 0:
            raise _VoiceNotFound(rendition.voice_name)
        lib.espeak_SetParameter(_RATE, int(rendition.rate), 0)
        lib.espeak_SetParameter(_PITCH, int(rendition.pitch), 0)
        buf = text.encode("utf-8") + b"\0"
        err = lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if err != 0:
            raise SpeechError(f"espeak_Synth returned error {err} for {text!r}.\n  expected: 0\n"
                              "  fix: report the text; try another rendition")
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        counts = self._phoneme_counts([t.text for t in whitespace_tokens(text)])
        return {"audio": audio, "events": events, "rate": rate, "phonemes": phonemes, "counts": counts}

    def _phoneme_counts(self, words: Sequence[str]) -> list[int] | None:
        """Phonemes of each word spoken alone (``espeak_TextToPhonemes``, pauses not counted).
        Called after synthesis, in the child, so it cannot change the audio."""
        fn = getattr(self._lib, "espeak_TextToPhonemes", None)
        if fn is None:
            return None
        fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        fn.restype = ctypes.c_char_p
        out = []
        for w in words:
            buf = ctypes.create_string_buffer(w.encode("utf-8"))
            ptr = ctypes.c_void_p(ctypes.addressof(buf))
            n, guard = 0, 0
            while ptr.value and guard < 64:  # one call per clause
                res = fn(ctypes.byref(ptr), _CHARS_UTF8, ord("|") << 8) or b""
                n += sum(1 for p in res.decode("utf-8", "replace").replace(" ", "|").split("|")
                         if p and not p.startswith("_"))
                guard += 1
            out.append(n)
        return out

    def _child(self, conn, text: str, rendition: Rendition) -> None:  # noqa: ANN001
        try:
            conn.send(("ok", self._raw(text, rendition)))
        except _VoiceNotFound as err:
            conn.send(("voice", str(err)))
        except BaseException as err:  # noqa: BLE001 — everything goes back to the parent
            conn.send(("err", f"{type(err).__name__}: {err}"))
        finally:
            conn.close()

    # -- in the parent ----------------------------------------------------------------------
    def _finish(self, msg: tuple, text: str, rendition: Rendition) -> Utterance:
        kind = msg[0]
        if kind == "voice":
            raise self._voice_error(msg[1])
        if kind != "ok":
            raise SpeechError(f"espeak-ng failed for {text!r} ({rendition}): {msg[1]}.\n"
                              "  expected: audio and word events\n  fix: check the text and voice")
        out = msg[1]
        raw, events, rate = out["audio"], out["events"], out["rate"]
        if len(raw) == 0 or not events:
            raise SpeechError(f"espeak-ng produced no {'audio' if len(raw) == 0 else 'word events'} "
                              f"for {text!r} ({rendition}).\n  expected: speakable words\n"
                              "  fix: check the text contains words, not only punctuation")
        audio = np.clip(resample(raw.astype(np.float32) / 32768.0, rate), -1.0, 1.0)
        tokens = whitespace_tokens(text)
        ev = [(pos - 1, ms / 1000.0) for pos, ms in events]
        last_onset = max(t for _, t in ev)
        loud = np.flatnonzero(np.abs(audio) > self.trim_threshold)
        end_n = int(loud[-1]) + 1 if loud.size else len(audio)
        end_n = min(len(audio), max(end_n, int(np.ceil((last_onset + self.min_last_word_s)
                                                       * SAMPLE_RATE))))
        audio = np.ascontiguousarray(audio[:end_n])
        spans, estimated = events_to_spans(
            tokens, ev, end_n / SAMPLE_RATE, phonemes=[(ms / 1000.0, name) for ms, name in out["phonemes"]],
            counts=out["counts"])
        if self.word_floor_db is not None:
            spans = trim_word_spans(audio, spans, SAMPLE_RATE, floor_db=self.word_floor_db)
        words = tuple(WordSpan(t.text, s, e) for t, (s, e) in zip(tokens, spans))
        return Utterance(text=text, audio=audio, words=words, rendition=rendition,
                         backend=self.version, estimated=estimated)

    def _voice_error(self, name: str) -> SpeechError:
        voices = self.voices()
        base = name.split("+")[0]
        close = [v for v in difflib.get_close_matches(base, voices, n=5, cutoff=0.5) if v != base]
        hint = " (British English is 'en', not 'en-gb')" if name.startswith("en-gb") else ""
        return SpeechError(f"espeak-ng has no voice {name!r}{hint}.\n  expected: one of "
                           f"{len(voices)} voices, e.g. {', '.join(close or voices[:6])}; variants "
                           "as '+m1'…'+m8', '+f1'…'+f5'\n  fix: pick a listed voice "
                           "(EspeakBackend().voices())")

    def voices(self) -> tuple[str, ...]:
        """Names of the installed voices (languages like ``en-us`` and voice files like
        ``gmw/en-US``), found in a forked child so that this process never synthesises."""
        if self._voices is None:
            ctx = mp.get_context("fork")
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=self._list_voices_child, args=(send,), daemon=True)
            p.start()
            send.close()
            self._voices = tuple(recv.recv()) if recv.poll(self.timeout_s) else ()
            p.join(1)
        return self._voices

    def _list_voices_child(self, conn) -> None:  # noqa: ANN001
        names: set[str] = set()
        try:
            self._init()
            arr = self._lib.espeak_ListVoices(None)
            i = 0
            while arr[i]:
                v = arr[i].contents
                names.add(v.name.decode(errors="replace"))
                if v.identifier:
                    names.add(v.identifier.decode(errors="replace"))
                names.update(_languages(v.languages))
                i += 1
        finally:
            conn.send(sorted(names))
            conn.close()

    def variants(self) -> tuple[str, ...] | None:
        """Names of the installed voice variants (``voices/!v`` in the data folder); ``None`` when
        the data folder is unknown (system library with its built-in path)."""
        if not self.data_path:
            return None
        folder = os.path.join(self.data_path, "voices", "!v")
        return tuple(sorted(os.listdir(folder))) if os.path.isdir(folder) else None

    def _check_variant(self, rendition: Rendition) -> None:
        # espeak-ng silently ignores an unknown variant; refuse it instead.
        known = self.variants()
        if rendition.variant is None or known is None or rendition.variant in known:
            return
        close = difflib.get_close_matches(rendition.variant, known, n=4, cutoff=0.4)
        raise SpeechError(f"espeak-ng has no voice variant {rendition.variant!r} "
                          f"(rendition {rendition}).\n  expected: one of {len(known)} variants, "
                          f"e.g. {', '.join(close or ['m1', 'm3', 'f2', 'klatt'])}\n"
                          "  fix: pick a listed variant (EspeakBackend().variants())")

    def synthesize(self, text: str, rendition: Rendition = Rendition()) -> Utterance:
        """Synthesise one utterance in a freshly forked child (bit-exact across calls)."""
        for _, res in self.synthesize_many([(text, rendition)], workers=1):
            if isinstance(res, SpeechError):
                raise res
            return res
        raise AssertionError("unreachable")

    def synthesize_many(self, requests: Sequence[tuple[str, Rendition]], *, workers: int = 2
                        ) -> Iterator[tuple[int, Utterance | SpeechError]]:
        """Synthesise each request in its own forked child, ``workers`` at a time; yield
        ``(index, Utterance or SpeechError)`` in completion order. Errors never stop the rest."""
        ctx = mp.get_context("fork")
        pending = deque(enumerate(requests))
        running: dict = {}
        try:
            while pending or running:
                while pending and len(running) < max(1, int(workers)):
                    i, (text, rendition) = pending.popleft()
                    try:
                        check_text(text)
                        self._check_variant(rendition)
                    except SpeechError as err:
                        yield i, err
                        continue
                    recv, send = ctx.Pipe(duplex=False)
                    p = ctx.Process(target=self._child, args=(send, text, rendition), daemon=True)
                    p.start()
                    send.close()
                    running[recv] = (i, p, time.monotonic() + self.timeout_s, text, rendition)
                if not running:
                    continue
                for conn in mp.connection.wait(list(running), timeout=0.5):
                    i, p, _, text, rendition = running.pop(conn)
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        p.join(5)
                        msg = ("err", f"worker exited with code {p.exitcode} before answering")
                    conn.close()
                    p.join(5)
                    try:
                        yield i, self._finish(msg, text, rendition)
                    except SpeechError as err:
                        yield i, err
                now = time.monotonic()
                for conn, (i, p, deadline, text, rendition) in list(running.items()):
                    if now > deadline:
                        running.pop(conn)
                        p.kill()
                        p.join(5)
                        conn.close()
                        yield i, SpeechError(
                            f"espeak-ng took longer than {self.timeout_s:.0f} s for {text!r} "
                            f"({rendition}).\n  expected: ~30 ms per utterance\n"
                            "  fix: shorten the text or raise timeout_s")
        finally:
            for conn, (_, p, *_rest) in running.items():
                p.kill()
                p.join(5)
                conn.close()

    def synthesize_in_process(self, text: str, rendition: Rendition = Rendition()) -> Utterance:
        """Synthesise in *this* process, without forking. Faster, but NOT reproducible: repeated
        calls drift, and children forked afterwards inherit the drifted state. For benchmarks of
        the fork overhead only; see ``docs/gotchas/tts-determinism.md``."""
        check_text(text)
        self._check_variant(rendition)
        try:
            raw = self._raw(text, rendition)
        except _VoiceNotFound as err:
            raise self._voice_error(str(err)) from None
        return self._finish(("ok", raw), text, rendition)


class _VoiceNotFound(Exception):
    pass


def _languages(addr: int | None) -> list[str]:
    """Decode espeak_VOICE.languages: (priority byte, NUL-terminated name)*, then a 0 byte."""
    out: list[str] = []
    while addr and ctypes.c_ubyte.from_address(addr).value != 0:
        name = ctypes.string_at(addr + 1)
        out.append(name.decode(errors="replace"))
        addr += 2 + len(name)
    return out
