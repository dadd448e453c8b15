"""Aligners: where each whitespace token of a text is in its audio.

- :class:`EventAligner` (default): the TTS's own word events — exact for synthetic speech.
- :class:`ManifestAligner`: user-supplied word times (CSV, JSON, Praat TextGrid from the Montreal
  Forced Aligner).
- :class:`WhisperXAligner`: WhisperX forced alignment (optional; imported lazily).

Every aligner returns one :class:`WordSpan` per whitespace token; a token it could not place has
``None`` times. :func:`check_alignment` then refuses an item whose subject words lack a span —
items are rejected with a reason, never silently mis-aligned.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from pathlib import Path
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import AlignerUnavailable, AlignmentError
from .tokens import whitespace_tokens
from .audio import require_rates
from .tts import SAMPLE_RATE, WordSpan, resample

TimedWord = tuple[str, float, float]


@runtime_checkable
class Aligner(Protocol):
    """Maps (text, audio) to one :class:`WordSpan` per whitespace token of ``text``.

    ``key`` names the utterance (an item id or a recording's file stem) for manifests and
    messages; ``events`` are the TTS's own spans when there are any."""

    name: str

    def align(self, text: str, audio: np.ndarray, *, key: str,
              events: Sequence[WordSpan] | None = None,
              sample_rate: int | None = None) -> tuple[WordSpan, ...]: ...


class EventAligner:
    """The TTS's own word events (exact for synthetic speech). Needs ``events``."""

    name = "events"

    def align(self, text: str, audio: np.ndarray, *, key: str,
              events: Sequence[WordSpan] | None = None,
              sample_rate: int | None = None) -> tuple[WordSpan, ...]:
        if events is None:
            raise AlignmentError(f"No TTS word events for {key!r}.\n  expected: an utterance from "
                                 "a backend that reports word times\n  fix: use ManifestAligner "
                                 "or WhisperXAligner for recordings and third-party TTS")
        return tuple(WordSpan(*w) for w in events)


def normalise_word(word: str) -> str:
    """Comparison form of a word: NFKC, case-folded, letters and digits only
    (``"France's"`` → ``"frances"``, ``"São"`` → ``"são"``)."""
    w = unicodedata.normalize("NFKC", word).casefold()
    return "".join(ch for ch in w if ch.isalnum())


def match_words(text: str, timed: Sequence[TimedWord], *, max_join: int = 4,
                max_skip: int = 3) -> tuple[WordSpan, ...]:
    """Match timed words (from a manifest or an aligner) to the whitespace tokens of ``text``.

    Tokens and words are compared by :func:`normalise_word`. A token may equal up to ``max_join``
    consecutive timed words joined (``"d'Ivoire"`` vs ``d`` + ``ivoire``); up to ``max_skip`` timed
    words not in the text (fillers) are skipped. A token with no match gets ``None`` times."""
    words = [(normalise_word(w), float(s), float(e)) for w, s, e in timed]
    words = [w for w in words if w[0]]  # MFA's empty intervals are silence
    out: list[WordSpan] = []
    j = 0
    for tok in whitespace_tokens(text):
        target = normalise_word(tok.text)
        hit = None
        if target:
            for skip in range(0, max_skip + 1):
                start = j + skip
                acc = ""
                for k in range(start, min(len(words), start + max_join)):
                    acc += words[k][0]
                    if acc == target:
                        hit = (start, k)
                        break
                    if not target.startswith(acc):
                        break
                if hit:
                    break
        if hit:
            a, b = hit
            out.append(WordSpan(tok.text, words[a][1], words[b][2]))
            j = b + 1
        else:
            out.append(WordSpan(tok.text, None, None))
    return tuple(out)


def check_alignment(words: Sequence[WordSpan], subject_range: tuple[int, int] | None, *,
                    key: str, duration_s: float | None = None, tol_s: float = 0.02) -> None:
    """Raise :class:`AlignmentError` (naming ``key`` and the reason) unless every subject word has
    a span with ``end > start``, timed words are in order and do not overlap (by more than
    ``tol_s``), and all lie inside the audio (``duration_s``, when given)."""
    if subject_range is not None:
        first, last = subject_range
        if not (0 <= first <= last < len(words)):
            raise AlignmentError(f"Item {key!r}: subject words {first}..{last} are outside the "
                                 f"{len(words)} words.\n  expected: indices into the text's "
                                 "whitespace tokens\n  fix: recompute the subject range")
        for i in range(first, last + 1):
            w, s, e = words[i]
            if s is None or e is None or not e > s:
                raise AlignmentError(
                    f"Item {key!r}: subject word {i} {w!r} has no span ({s}, {e}).\n  expected: "
                    "every subject word aligned to a non-empty time span\n  fix: supply its "
                    "times in the manifest, or check the transcript matches the audio")
    prev_end, prev_word = None, None
    for i, (w, s, e) in enumerate(words):
        if s is None or e is None:
            continue
        if e < s:
            raise AlignmentError(f"Item {key!r}: word {i} {w!r} ends ({e:.3f} s) before it starts "
                                 f"({s:.3f} s).\n  expected: start <= end\n  fix: correct the "
                                 "word times")
        if prev_end is not None and s < prev_end - tol_s:
            raise AlignmentError(f"Item {key!r}: word {i} {w!r} starts at {s:.3f} s, before "
                                 f"{prev_word!r} ends at {prev_end:.3f} s.\n  expected: words in "
                                 "order, not overlapping\n  fix: correct the word times")
        if s < -tol_s or (duration_s is not None and e > duration_s + tol_s):
            raise AlignmentError(f"Item {key!r}: word {i} {w!r} ({s:.3f}–{e:.3f} s) lies outside "
                                 f"the audio (0–{duration_s} s).\n  expected: times inside the "
                                 "audio\n  fix: check the times are seconds, not ms or samples")
        prev_end, prev_word = e, w


# --- manifests ------------------------------------------------------------------------------

_KEY_COLS = ("key", "utt_id", "id", "file", "audio")


class ManifestAligner:
    """Word times supplied by the user, keyed by utterance (an item id or a recording's stem).

    Build with :meth:`load` (by suffix), :meth:`from_csv`, :meth:`from_json` or
    :meth:`from_textgrid`. ``times`` maps key → list of ``(word, start_s, end_s)``."""

    name = "manifest"

    def __init__(self, times: Mapping[str, Sequence[TimedWord]], source: str = "<memory>"):
        self.times = {str(k): [(str(w), float(s), float(e)) for w, s, e in v]
                      for k, v in times.items()}
        self.source = source

    def __repr__(self) -> str:
        return f"ManifestAligner({self.source!r}, {len(self.times)} utterances)"

    def align(self, text: str, audio: np.ndarray, *, key: str,
              events: Sequence[WordSpan] | None = None,
              sample_rate: int | None = None) -> tuple[WordSpan, ...]:
        stem = Path(key).stem
        timed = self.times.get(key, self.times.get(stem))
        if timed is None:
            raise AlignmentError(f"No word times for {key!r} in {self.source}.\n  expected: an "
                                 f"entry keyed by the utterance id or file stem ({len(self.times)} "
                                 "keys present)\n  fix: add the utterance to the manifest")
        return match_words(text, timed)

    @classmethod
    def load(cls, path: str | Path) -> "ManifestAligner":
        """Read a ``.csv``, ``.json`` / ``.jsonl``, ``.TextGrid`` file, or a folder of TextGrids."""
        p = Path(path)
        if p.is_dir() or p.suffix.lower() == ".textgrid":
            return cls.from_textgrid(p)
        if p.suffix.lower() == ".csv":
            return cls.from_csv(p)
        if p.suffix.lower() in (".json", ".jsonl"):
            return cls.from_json(p)
        raise AlignmentError(f"Unknown word-time manifest format {str(p)!r}.\n  expected: .csv, "
                             ".json, .jsonl, .TextGrid or a folder of TextGrids\n  fix: rename or "
                             "convert the file")

    @classmethod
    def from_csv(cls, path: str | Path) -> "ManifestAligner":
        """CSV with a header: a key column (``key``/``utt_id``/``id``/``file``/``audio``) and
        ``word``, ``start``, ``end`` (seconds), one row per word, in order."""
        p = Path(path)
        times: dict[str, list[TimedWord]] = {}
        with _opened(p) as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip().lower() for c in reader.fieldnames or []]
            kcol = next((c for c in _KEY_COLS if c in cols), None)
            if kcol is None or not {"word", "start", "end"} <= set(cols):
                raise AlignmentError(f"{str(p)!r} has columns {cols}.\n  expected: a key column "
                                     f"(one of {', '.join(_KEY_COLS)}) and word,start,end\n  fix: "
                                     "add a header row")
            for n, row in enumerate(reader, start=2):
                row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                times.setdefault(row[kcol], []).append(
                    (row["word"], _num(row["start"], p, n), _num(row["end"], p, n)))
        return cls(times, str(p))

    @classmethod
    def from_json(cls, path: str | Path) -> "ManifestAligner":
        """JSON ``{key: [[word, start, end], ...]}`` (or ``{"word", "start", "end"}`` objects), a
        list / JSONL of ``{"key": ..., "words": [...]}`` records."""
        p = Path(path)
        with _opened(p) as fh:
            raw = fh.read()
        try:
            if p.suffix.lower() == ".jsonl":
                data = [json.loads(line) for line in raw.splitlines() if line.strip()]
            else:
                data = json.loads(raw)
        except json.JSONDecodeError as err:
            raise AlignmentError(f"{str(p)!r} is not valid JSON: {err}.\n  expected: see "
                                 "docs/usage/aligners.md for the shape\n  fix: repair the file"
                                 ) from None
        if isinstance(data, list):
            try:
                data = {str(r[next(c for c in _KEY_COLS if c in r)]): r["words"] for r in data}
            except (StopIteration, KeyError, TypeError):
                raise AlignmentError(f"{str(p)!r}: records need a key field and 'words'.\n  "
                                     "expected: {\"key\": \"utt1\", \"words\": [[\"Paris\", 0.1, "
                                     "0.5]]}\n  fix: add the fields") from None
        times: dict[str, list[TimedWord]] = {}
        for key, words in data.items():
            rows: list[TimedWord] = []
            for w in words:
                try:
                    rows.append((w["word"], float(w["start"]), float(w["end"])) if isinstance(w, dict)
                                else (str(w[0]), float(w[1]), float(w[2])))
                except (KeyError, IndexError, TypeError, ValueError):
                    raise AlignmentError(f"{str(p)!r}: bad word entry {w!r} for {key!r}.\n  "
                                         "expected: [word, start_s, end_s] or {word, start, end}"
                                         "\n  fix: correct the entry") from None
            times[str(key)] = rows
        return cls(times, str(p))

    @classmethod
    def from_textgrid(cls, path: str | Path, *, tier: str = "words") -> "ManifestAligner":
        """Praat TextGrid(s) as written by the Montreal Forced Aligner: the interval tier named
        ``tier`` (default ``"words"``); empty intervals are silence. The key is the file stem."""
        p = Path(path)
        files = sorted(q for q in p.iterdir() if q.suffix.lower() == ".textgrid") if p.is_dir() \
            else [p]
        return cls({f.stem: parse_textgrid(f, tier=tier) for f in files}, str(p))


def parse_textgrid(path: str | Path, *, tier: str = "words") -> list[TimedWord]:
    """The non-empty intervals of one interval tier of a Praat TextGrid (long text format, as
    MFA writes it; the short format is read too)."""
    p = Path(path)
    with _opened(p) as fh:
        text = fh.read()
    tiers = re.split(r'\n\s*item\s*\[\d+\]\s*:', text)
    for block in tiers[1:]:
        name = re.search(r'name\s*=\s*"([^"]*)"', block)
        if name and name.group(1) == tier:
            out = []
            for m in re.finditer(r'xmin\s*=\s*([-\d.eE+]+)\s*xmax\s*=\s*([-\d.eE+]+)\s*'
                                 r'text\s*=\s*"((?:[^"]|"")*)"', block):
                word = m.group(3).replace('""', '"').strip()
                if word:
                    out.append((word, float(m.group(1)), float(m.group(2))))
            return out
    if "ooTextFile" in text and "item [" not in text:  # short format
        parts = re.findall(r'"((?:[^"]|"")*)"|([-\d.eE+]+)', text)
        toks = [a if a or not b else b for a, b in parts]
        if tier in toks:
            i = toks.index(tier) + 3
            n = int(float(toks[i]))
            out = []
            for k in range(n):
                s, e, w = toks[i + 1 + 3 * k: i + 4 + 3 * k]
                if w.strip():
                    out.append((w.strip(), float(s), float(e)))
            return out
    raise AlignmentError(f"{str(p)!r} has no interval tier named {tier!r}.\n  expected: a "
                         "TextGrid with a words tier (MFA writes 'words' and 'phones')\n  fix: "
                         "pass tier='<name>'")


def _opened(p: Path):
    try:
        return open(p, encoding="utf-8-sig", newline="")
    except OSError as err:
        raise AlignmentError(f"Cannot open word-time manifest {str(p)!r}: {err.strerror}.\n  "
                             "expected: a readable file\n  fix: check the path") from None


def _num(value: str, p: Path, line: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise AlignmentError(f"{str(p)!r} line {line}: {value!r} is not a number of seconds.\n"
                             "  expected: start/end in seconds, e.g. 0.125\n  fix: correct the "
                             "cell") from None


# --- WhisperX --------------------------------------------------------------------------------

WHISPERX_RECIPE = ("pip install --no-deps whisperx==3.8.6 && pip install nltk pandas "
                   "faster-whisper  (see docs/usage/aligners.md)")


class WhisperXAligner:
    """WhisperX forced alignment of the *known* transcript (one segment spanning the audio).

    Args:
        model_dir: a local wav2vec2 CTC model folder (Hugging Face format) — never downloaded.
        language: language code passed to WhisperX. Default ``"en"``.
        device: torch device. Default ``"cpu"``.

    ``whisperx`` is imported on first use; without it, :class:`AlignerUnavailable` says how to
    install it. Words WhisperX cannot place get ``None`` times."""

    name = "whisperx"

    def __init__(self, model_dir: str | Path, *, language: str = "en", device: str = "cpu"):
        self.model_dir = Path(model_dir)
        self.language = language
        self.device = device
        self._model = None

    def _load(self):
        try:
            import whisperx  # noqa: F401
        except ImportError as err:
            raise AlignerUnavailable(
                f"WhisperXAligner needs the 'whisperx' package, which is not importable ({err}).\n"
                "  expected: whisperx 3.8.6 installed without its torch pin\n"
                f"  fix: {WHISPERX_RECIPE}") from None
        if not self.model_dir.is_dir():
            raise AlignerUnavailable(
                f"WhisperX alignment model folder {str(self.model_dir)!r} does not exist.\n"
                "  expected: a local wav2vec2 CTC model (config.json, weights, vocab)\n"
                "  fix: download one on a machine with internet, e.g. "
                "facebook/wav2vec2-base-960h, and pass its folder")
        if self._model is None:
            self._model = whisperx.load_align_model(language_code=self.language,
                                                    device=self.device,
                                                    model_name=str(self.model_dir))
        return whisperx

    def align(self, text: str, audio: np.ndarray, *, key: str,
              events: Sequence[WordSpan] | None = None,
              sample_rate: int | None = None) -> tuple[WordSpan, ...]:

        require_rates(sample_rate, 1, arg="sample_rate", where=f"WhisperXAligner.align({key!r}): ")
        if int(sample_rate) != SAMPLE_RATE:  # type: ignore[arg-type]
            audio = resample(np.asarray(audio, np.float32), int(sample_rate))  # type: ignore[arg-type]
        whisperx = self._load()
        model, metadata = self._model
        segment = {"text": text, "start": 0.0, "end": len(audio) / SAMPLE_RATE}
        try:
            result = whisperx.align([segment], model, metadata, np.asarray(audio, np.float32),
                                    self.device, return_char_alignments=False)
        except Exception as err:  # whisperx raises plain exceptions
            raise AlignmentError(f"WhisperX failed to align {key!r}: {err}.\n  expected: audio "
                                 "that speaks the transcript\n  fix: check the audio and text"
                                 ) from None
        timed = [(w["word"], w["start"], w["end"]) for w in result.get("word_segments", [])
                 if "start" in w and "end" in w]
        return match_words(text, timed)
