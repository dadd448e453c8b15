"""Recorded (or externally synthesised) audio as a TTS backend: a manifest maps texts to files.

A manifest is a CSV or JSONL file with one row per recording: ``text``, ``audio`` (path; relative
paths resolve against the manifest's folder) and optionally ``rendition`` (a
:class:`~lalm_interp.speech.tts.Rendition` string such as ``"en-us"`` naming the speaker/voice; rows
without one serve every rendition). Word times come from an :class:`~.aligners.Aligner` called
with the audio file's stem as key (a :class:`~.aligners.ManifestAligner` or WhisperX), or from an
inline ``words`` list in JSONL rows.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from .aligners import Aligner, ManifestAligner
from .audio import load_audio
from .errors import SpeechError
from .tts import Rendition, Utterance


class RecordingsBackend:
    """Serves recordings listed in a manifest through the :class:`TTSBackend` protocol."""

    name = "recordings"

    def __init__(self, manifest: str | Path, aligner: Aligner | None = None):
        self.manifest = Path(manifest)
        try:
            raw = self.manifest.read_bytes()
        except OSError as err:
            raise SpeechError(f"Cannot read recordings manifest {str(self.manifest)!r}: "
                              f"{err.strerror}.\n  expected: a CSV or JSONL file\n  fix: check "
                              "the path") from None
        self._digest = hashlib.sha256(raw).hexdigest()[:12]
        rows = self._rows(raw.decode("utf-8-sig"))
        inline = {Path(r["audio"]).stem: r["words"] for r in rows if r.get("words")}
        self.aligner = aligner or ManifestAligner(inline, f"{self.manifest} (inline words)")
        self._index: dict[tuple[str, str | None], Path] = {}
        for r in rows:
            path = Path(r["audio"])
            if not path.is_absolute():
                path = self.manifest.parent / path
            rend = str(Rendition.parse(r["rendition"])) if r.get("rendition") else None
            self._index[(r["text"], rend)] = path

    def _rows(self, text: str) -> list[dict]:
        if self.manifest.suffix.lower() == ".csv":
            rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                    for row in csv.DictReader(text.splitlines())]
        else:
            try:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as err:
                raise SpeechError(f"{str(self.manifest)!r} is not JSONL: {err}.\n  expected: one "
                                  "JSON object per line\n  fix: repair the file") from None
        for n, r in enumerate(rows, start=1):
            if not r.get("text") or not r.get("audio"):
                raise SpeechError(f"{str(self.manifest)!r} row {n} lacks 'text' or 'audio': "
                                  f"{r!r}.\n  expected: text and audio path in every row\n  fix: "
                                  "complete the row")
        return rows

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
        audio = load_audio(path, key=key)
        words = self.aligner.align(text, audio, key=key)
        return Utterance(text=text, audio=audio, words=words, rendition=rendition,
                         backend=self.version)
