"""Recorded (or externally synthesised) audio as a TTS backend: a manifest maps texts to files.

A manifest is a CSV or JSONL file with one row per recording: ``text``, ``audio`` (path; relative
paths resolve against the manifest's folder and must stay inside it) and optionally ``rendition``
(a :class:`~lalm_interp.speech.tts.Rendition` string such as ``"en-us"`` naming the
speaker/voice; rows without one serve every rendition). Word times come from an
:class:`~.aligners.Aligner` called with the audio file's stem as key (a
:class:`~.aligners.ManifestAligner` or WhisperX), or from an inline ``words`` list (JSONL rows; in
a CSV, a JSON string such as ``[["Paris", 0.10, 0.52], ["is", 0.52, 0.70]]``).

Audio files are read with :func:`~.audio.load_audio`: any rate (resampled to 16 kHz), any channel
count (mixed down), WAV / FLAC / OGG / MP3.

:func:`read_import_manifest` reads the richer manifest of ``lalm-interp bench import`` (adds
``subject`` and ``target`` columns); see docs/usage/recordings.md.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AudioInputError, LalmInterpError
from .aligners import Aligner, ManifestAligner
from .audio import load_audio
from .errors import SpeechError
from .tts import SAMPLE_RATE, Rendition, Utterance
from .tokens import subject_token_range


def _manifest_rows(manifest: Path, raw: bytes) -> list[dict[str, Any]]:
    """Rows of a CSV (header row; keys lower-cased, cells stripped) or JSONL manifest, with the
    1-based data row number under ``"_row"`` and a CSV ``words`` cell parsed as JSON."""
    text = raw.decode("utf-8-sig")
    rows: list[dict[str, Any]] = []
    if manifest.suffix.lower() == ".csv":
        for n, row in enumerate(csv.DictReader(text.splitlines()), start=1):
            r: dict[str, Any] = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            if r.get("words"):
                try:
                    r["words"] = json.loads(r["words"])
                except json.JSONDecodeError as err:
                    raise SpeechError(f"{str(manifest)!r} row {n}: the 'words' cell is not JSON "
                                      f"({err}).\n  expected: [[\"Paris\", 0.10, 0.52], ...] "
                                      "(word, start_s, end_s)\n  fix: quote the cell, or give "
                                      "word times in a separate file (--words)") from None
            r["_row"] = n
            rows.append(r)
    elif manifest.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate((ln for ln in text.splitlines() if ln.strip()), start=1):
            try:
                r = json.loads(line)
            except json.JSONDecodeError as err:
                raise SpeechError(f"{str(manifest)!r} is not JSONL: row {n}: {err}.\n  expected: "
                                  "one JSON object per line\n  fix: repair the file") from None
            if not isinstance(r, dict):
                raise SpeechError(f"{str(manifest)!r} row {n} is {type(r).__name__}, not an "
                                  "object.\n  expected: one JSON object per line\n  fix: repair "
                                  "the file")
            r = {str(k).lower(): v for k, v in r.items()}
            r["_row"] = n
            rows.append(r)
    else:
        raise SpeechError(f"Unknown manifest format {str(manifest)!r}.\n  expected: a .csv or "
                          ".jsonl file\n  fix: rename or convert it")
    if not rows:
        raise SpeechError(f"{str(manifest)!r} has no rows.\n  expected: a header and one row per "
                          "recording\n  fix: add the recordings")
    return rows


def resolve_audio_path(manifest: Path, value: str, row: int) -> Path:
    """The audio path of a manifest row: absolute as given; relative against the manifest's
    folder, refused (:class:`SpeechError`) when it leaves that folder (``../x.wav``)."""
    p = Path(value)
    if p.is_absolute():
        return p
    base = manifest.parent.resolve()
    full = (base / p).resolve()
    if base != full and base not in full.parents:
        raise SpeechError(f"{str(manifest)!r} row {row}: audio path {value!r} leaves the manifest's "
                          f"folder ({str(base)!r}).\n  expected: a path inside that folder, or an "
                          "absolute path\n  fix: move the file next to the manifest, or write "
                          "its absolute path")
    return manifest.parent / p


def _read(manifest: Path) -> bytes:
    try:
        return manifest.read_bytes()
    except OSError as err:
        raise SpeechError(f"Cannot read recordings manifest {str(manifest)!r}: "
                          f"{err.strerror}.\n  expected: a CSV or JSONL file\n  fix: check "
                          "the path") from None


class RecordingsBackend:
    """Serves recordings listed in a manifest through the :class:`TTSBackend` protocol."""

    name = "recordings"

    def __init__(self, manifest: str | Path, aligner: Aligner | None = None):
        self.manifest = Path(manifest)
        raw = _read(self.manifest)
        self._digest = hashlib.sha256(raw).hexdigest()[:12]
        rows = _manifest_rows(self.manifest, raw)
        for r in rows:
            if not r.get("text") or not r.get("audio"):
                raise SpeechError(f"{str(self.manifest)!r} row {r['_row']} lacks 'text' or "
                                  f"'audio': {_show(r)}.\n  expected: text and audio path in "
                                  "every row\n  fix: complete the row")
        inline = {Path(str(r["audio"])).stem: r["words"] for r in rows if r.get("words")}
        try:
            self.aligner = aligner or ManifestAligner(inline, f"{self.manifest} (inline words)")
        except (TypeError, ValueError):
            raise SpeechError(f"{str(self.manifest)!r}: an inline 'words' list is malformed.\n  "
                              "expected: [[word, start_s, end_s], ...]\n  fix: correct the "
                              "words") from None
        self._index: dict[tuple[str, str | None], Path] = {}
        for r in rows:
            path = resolve_audio_path(self.manifest, str(r["audio"]), r["_row"])
            rend = str(Rendition.parse(r["rendition"])) if r.get("rendition") else None
            self._index[(r["text"], rend)] = path

    @property
    def version(self) -> str:
        """``"recordings <sha256 of the manifest, 12 hex>"``."""
        return f"recordings {self._digest}"

    def synthesize(self, text: str, rendition: Rendition = Rendition()) -> Utterance:
        path = self._index.get((text, str(rendition))) or self._index.get((text, None))
        if path is None:
            raise SpeechError(f"No recording of {text!r} ({rendition}) in {self.manifest}.\n  "
                              "expected: a manifest row with this exact text (and rendition, if "
                              "rows name one)\n  fix: record it, or restrict the build")
        key = path.stem
        try:
            audio = load_audio(path, key=key)  # any rate → 16 kHz, mixed down, finite
        except AudioInputError as err:  # the TTS protocol's error type, same message
            raise SpeechError(str(err).split("\n  see ")[0]) from None
        words = self.aligner.align(text, audio, key=key, sample_rate=SAMPLE_RATE)
        return Utterance(text=text, audio=audio, words=words, rendition=rendition,
                         backend=self.version)


def _show(r: dict[str, Any]) -> str:
    return repr({k: v for k, v in r.items() if k != "_row"})


# --- the import manifest (lalm-interp bench import) --------------------------------------

IMPORT_COLUMNS = ("audio", "text", "subject", "target")
"""Required columns of an import manifest (``target_true`` is accepted for ``target``)."""


@dataclass(frozen=True)
class ImportRow:
    """One recording to import: ``audio`` path, transcript ``text`` (the prompt, without the
    object), ``subject`` (verbatim in ``text``), ``target`` (the true object), optional
    ``target_new`` (for editing) and ``row`` (1-based data row in the manifest)."""

    row: int
    audio: Path
    text: str
    subject: str
    target: str
    target_new: str | None = None


def read_import_manifest(manifest: str | Path, *, need_words: bool = True) -> list[ImportRow]:
    """Read and check an import manifest (CSV or JSONL). Raises :class:`SpeechError` naming the
    manifest and every bad row: a missing column or cell, an audio file that is missing or whose
    path leaves the manifest's folder, a subject that is not in the transcript, a repeated
    transcript, and (``need_words``) a row without inline ``words`` when no word-time file is
    given."""

    manifest = Path(manifest)
    rows = _manifest_rows(manifest, _read(manifest))
    cols = set().union(*(r.keys() for r in rows))
    if "target_true" in cols:
        for r in rows:
            r.setdefault("target", r.get("target_true"))
        cols.add("target")
    missing = [c for c in IMPORT_COLUMNS if c not in cols]
    if missing:
        raise SpeechError(f"{str(manifest)!r} has no {', '.join(repr(c) for c in missing)} "
                          f"column (columns: {sorted(c for c in cols if c != '_row')}).\n  "
                          f"expected: {', '.join(IMPORT_COLUMNS)} (+ optional target_new, words)"
                          "\n  fix: add the column(s); see docs/usage/recordings.md")
    problems: list[str] = []
    out: list[ImportRow] = []
    seen: dict[str, int] = {}
    stems: dict[str, int] = {}
    for r in rows:
        n = r["_row"]
        empty = [c for c in IMPORT_COLUMNS if not str(r.get(c) or "").strip()]
        if empty:
            problems.append(f"row {n}: empty {', '.join(empty)}")
            continue
        text, subject = str(r["text"]).strip(), str(r["subject"]).strip()
        try:
            path = resolve_audio_path(manifest, str(r["audio"]), n)
        except SpeechError as err:
            problems.append(f"row {n}: " + str(err).split(": ", 1)[1].split("\n")[0])
            continue
        if not path.is_file():
            problems.append(f"row {n}: audio file {str(path)!r} "
                            f"{'is a folder, not a file' if path.is_dir() else 'does not exist'}")
            continue
        if path.stem in stems:  # word times (inline or --words) are keyed by the file's stem
            problems.append(f"row {n}: audio file name {path.stem!r} repeats row {stems[path.stem]} "
                            "(word times are keyed by file name without extension; rename one)")
            continue
        stems[path.stem] = n
        try:
            subject_token_range(text, subject)
        except LalmInterpError:
            problems.append(f"row {n}: subject {subject!r} is not in the transcript {text!r} "
                            "(verbatim, case-sensitive)")
            continue
        if need_words and not r.get("words"):
            problems.append(f"row {n}: no word timings ('words' cell) and no --words file")
            continue
        if text in seen:
            problems.append(f"row {n}: transcript {text!r} repeats row {seen[text]} (import each "
                            "transcript once; import a second speaker into another folder)")
            continue
        seen[text] = n
        if "rendition" in r and r.get("rendition"):
            problems.append(f"row {n}: 'rendition' is not used by bench import (one recording "
                            "per transcript); remove the column")
            continue
        new = str(r.get("target_new") or "").strip() or None
        out.append(ImportRow(n, path, text, subject, str(r["target"]).strip(), new))
    if problems:
        shown = "\n    ".join(problems[:20])
        more = f"\n    … {len(problems) - 20} more" if len(problems) > 20 else ""
        raise SpeechError(f"{str(manifest)!r}: {len(problems)} bad row(s):\n    {shown}{more}\n"
                          "  expected: every row with an existing audio file, its transcript, "
                          "a subject that occurs in it and the target\n  fix: correct the rows "
                          "(docs/usage/recordings.md)")
    return out
