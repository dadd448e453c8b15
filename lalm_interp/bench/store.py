"""The on-disk benchmark: an inspectable folder, content-addressed clips, atomic writes.

Layout (format version 1; every file opens with standard tools)::

    DIR/
      benchmark.json   what built it: format, source, backend version, renditions, forms, counts
      facts.jsonl      one Fact per line (datasets.Fact.to_json)
      items.jsonl      one spoken item per line (see Item)
      rejected.jsonl   one rejected item per line: id, fact_id, form, text, rendition, reason
      clips/<k[:2]>/<k>.flac   audio, 16 kHz mono, FLAC 24-bit
      clips/<k[:2]>/<k>.json   the clip's text, rendition, backend, n_samples, TTS word spans

``k`` is the sha256 (hex) of ``{"text", "rendition", "backend"}`` as canonical JSON; a clip is
present once its ``.json`` exists (written after the audio). Every file is written to a temporary
name in the same folder and renamed into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..speech.tts import SAMPLE_RATE, Rendition, WordSpan
from .datasets import Fact
from .errors import BenchmarkError
from ..atomic import write_bytes

FORMAT_VERSION = 1
FORMS = ("prompt", "subject", "relation", "paraphrase", "neighbourhood")
"""Item forms: the full prompt, the subject alone, the relation alone (prompt without subject),
a paraphrase prompt, a neighbourhood prompt (another subject, same relation and object)."""


def clip_key(text: str, rendition: Rendition | str, backend_version: str) -> str:
    """Content address of one clip: sha256 hex of the canonical JSON of the three."""
    blob = json.dumps({"text": text, "rendition": str(rendition), "backend": backend_version},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically with normal permissions (``0o666 & ~umask``): readers
    see the old file or the new one, never a partial one (:func:`lalm_interp.atomic.write_bytes`).
    ``fsync`` also flushes the data to disk before the rename (survives power loss, ~10 ms per
    file); clips skip it — a lost clip is resynthesised by the next build."""

    write_bytes(path, data, durable=fsync)


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))


def check_clip_key(key: Any, where: str = "") -> str:
    """A clip key names a file under ``clips/``: a plain name, never a path. Refuses ``../x``,
    absolute paths, separators and empty keys (a hand-edited or foreign ``items.jsonl`` could
    otherwise make the benchmark read files outside its folder)."""
    bad = (not isinstance(key, str) or not key or key in (".", "..") or key.startswith(".")
           or "/" in key or "\\" in key or "\0" in key or os.path.isabs(key))
    if bad:
        raise BenchmarkError(
            f"{where or 'clip'}: clip {key!r} is not a clip key; it names a path, and clips must stay "
            "inside the benchmark's clips/ folder.\n  expected: a content key such as the sha256 hex "
            "written by the builder (no '/', '\\', '..' or absolute paths)\n  fix: rebuild the "
            "benchmark with `lalm-interp bench build`, or copy the audio into the benchmark with the "
            "builder instead of pointing at files elsewhere")
    return key


class ClipStore:
    """Content-addressed audio clips under ``root/clips``. Keys are plain names (see
    :func:`check_clip_key`); reads refuse files that resolve outside the benchmark folder (e.g.
    through a symlink)."""

    def __init__(self, root: str | Path):
        self.bench_root = Path(root)
        self.root = self.bench_root / "clips"

    def paths(self, key: str) -> tuple[Path, Path]:
        check_clip_key(key)
        d = self.root / key[:2]
        return d / f"{key}.flac", d / f"{key}.json"

    def inside(self, path: Path) -> Path:
        """``path`` with symlinks resolved, refused unless it stays inside the benchmark folder."""
        real, base = path.resolve(), self.bench_root.resolve()
        if real != base and base not in real.parents:
            raise BenchmarkError(
                f"clip file {str(path)!r} resolves to {str(real)!r}, outside the benchmark folder "
                f"{str(base)!r} (a symlink points out of it).\n  expected: clips stored inside the "
                "benchmark's clips/ folder\n  fix: replace the symlink with the file itself (cp "
                "--dereference), or rebuild the benchmark with `lalm-interp bench build`")
        return real

    def has(self, key: str) -> bool:
        audio, meta = self.paths(key)
        return meta.is_file() and audio.is_file()

    def put(self, key: str, audio: np.ndarray, meta: dict) -> None:
        import io

        import soundfile as sf

        a_path, m_path = self.paths(key)
        audio = np.asarray(audio, dtype=np.float32)
        bad = int(np.count_nonzero(~np.isfinite(audio)))
        if bad:
            raise BenchmarkError(f"Clip {key!r} has {bad} NaN/inf sample(s); nothing was stored.\n"
                                 "  expected: finite samples in [-1, 1]\n  fix: repair or drop the "
                                 "recording (lalm_interp.load_audio reports where the first one is). "
                                 "Docs: docs/errors/benchmark.md")
        peak = float(np.abs(audio).max()) if audio.size else 0.0
        if peak > 1.0:
            n = int(np.count_nonzero(np.abs(audio) > 1.0))
            raise BenchmarkError(f"Clip {key!r} has {n} sample(s) beyond ±1 (peak {peak:.3g}); "
                                 "storing it would clip them silently, so nothing was stored.\n"
                                 "  expected: samples in [-1, 1]\n  fix: normalise it first "
                                 "(audio / peak). Docs: docs/errors/benchmark.md")
        buf = io.BytesIO()
        # the clip only maps +1.0 onto the largest 24-bit code; nothing beyond ±1 reaches here
        sf.write(buf, np.clip(audio, -1.0, 1.0 - 2.0 ** -23), SAMPLE_RATE, format="FLAC",
                 subtype="PCM_24")
        atomic_write_bytes(a_path, buf.getvalue(), fsync=False)
        atomic_write_bytes(m_path, json.dumps(meta, ensure_ascii=False).encode("utf-8"),
                           fsync=False)

    def meta(self, key: str) -> dict:
        path = self.paths(key)[1]
        self.inside(path)
        return _read_json(path)

    def audio(self, key: str) -> np.ndarray:
        import soundfile as sf

        path = self.paths(key)[0]
        self.inside(path)
        try:
            data, rate = sf.read(str(path), dtype="float32")
        except Exception as err:
            raise BenchmarkError(f"Cannot read clip {str(path)!r}: {err}.\n  expected: a FLAC "
                                 "file written by the builder\n  fix: delete it and rerun "
                                 "`lalm-interp bench build` to resynthesise it") from None
        if rate != SAMPLE_RATE:
            raise BenchmarkError(f"Clip {str(path)!r} is {rate} Hz.\n  expected: {SAMPLE_RATE} Hz"
                                 "\n  fix: delete it and rebuild")
        return data


@dataclass(frozen=True)
class Item:
    """One spoken item of a benchmark.

    Fields:
        item_id: ``"<fact_id>/<form>/<index>/<rendition>"``, unique in the benchmark.
        fact_id: the :class:`Fact` it comes from (``"counterfact:70"``).
        form: one of :data:`FORMS`.
        index: which paraphrase / neighbourhood prompt (0 for the other forms).
        text: the words spoken.
        rendition: the :class:`Rendition` it was spoken in.
        words: one ``(word, start_s, end_s)`` per whitespace token of ``text``, seconds.
        subject_word_range: ``(first, last)`` word indices of the subject, inclusive; ``None``
            for the relation and neighbourhood forms (their subject is absent / unknown).
        target_true: the object that completes ``text`` truthfully.
        target_new: CounterFact's counterfactual object (``None`` for Known-1000 and for
            neighbourhood items, whose object must not change).
        clip: content key of the audio under ``clips/``.
        n_samples: audio length in samples at 16 kHz.
    """

    item_id: str
    fact_id: str
    form: str
    index: int
    text: str
    rendition: Rendition
    words: tuple[WordSpan, ...]
    subject_word_range: tuple[int, int] | None
    target_true: str
    target_new: str | None
    clip: str
    n_samples: int
    _root: Path | None = field(default=None, repr=False, compare=False)

    @property
    def audio(self) -> np.ndarray:
        """The audio, float32 mono at 16 kHz (read from disk on each access)."""
        if self._root is None:
            raise BenchmarkError(f"Item {self.item_id!r} is not attached to a benchmark folder.\n"
                                 "  expected: an item from Benchmark.open(dir)\n  fix: open the "
                                 "benchmark and index it")
        return ClipStore(self._root).audio(self.clip)

    @property
    def sample_rate(self) -> int:
        """The rate of :attr:`audio` in Hz (benchmarks store 16 kHz clips)."""
        return SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return self.n_samples / SAMPLE_RATE

    @property
    def first_subject_word(self) -> int | None:
        return None if self.subject_word_range is None else self.subject_word_range[0]

    @property
    def last_subject_word(self) -> int | None:
        return None if self.subject_word_range is None else self.subject_word_range[1]

    @property
    def subject_span_s(self) -> tuple[float, float] | None:
        """``(start_s, end_s)`` of the subject words, or ``None``."""
        if self.subject_word_range is None:
            return None
        a, b = self.subject_word_range
        return self.words[a].start_s, self.words[b].end_s  # type: ignore[return-value]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.item_id, "fact_id": self.fact_id, "form": self.form,
                "index": self.index, "text": self.text, "rendition": str(self.rendition),
                "words": [list(w) for w in self.words],
                "subject_word_range": list(self.subject_word_range)
                if self.subject_word_range is not None else None,
                "target_true": self.target_true, "target_new": self.target_new,
                "clip": self.clip, "n_samples": self.n_samples}

    @classmethod
    def from_json(cls, d: dict[str, Any], root: Path | None = None) -> "Item":
        swr = d.get("subject_word_range")
        return cls(item_id=d["id"], fact_id=d["fact_id"], form=d["form"], index=int(d["index"]),
                   text=d["text"], rendition=Rendition.parse(d["rendition"]),
                   words=tuple(WordSpan(w, s, e) for w, s, e in d["words"]),
                   subject_word_range=tuple(swr) if swr is not None else None,  # type: ignore
                   target_true=d["target_true"], target_new=d.get("target_new"),
                   clip=d["clip"], n_samples=int(d["n_samples"]), _root=root)


@dataclass(frozen=True)
class Rejection:
    """An item the build refused, and why (``reason`` is the full error message)."""

    item_id: str
    fact_id: str
    form: str
    text: str
    rendition: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.item_id, "fact_id": self.fact_id, "form": self.form,
                "text": self.text, "rendition": self.rendition, "reason": self.reason}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Rejection":
        return cls(d["id"], d["fact_id"], d["form"], d["text"], d["rendition"], d["reason"])


class Benchmark(Sequence[Item]):
    """A built benchmark, opened read-only: a sequence of :class:`Item`.

    ``bench[i]`` or ``bench["counterfact:70/prompt/0/en-us:r175:p50"]``; ``bench.facts`` maps
    fact ids to :class:`Fact`; ``bench.rejected`` lists :class:`Rejection`; ``bench.meta`` is
    ``benchmark.json``."""

    def __init__(self, root: Path, meta: dict, facts: dict[str, Fact], items: list[Item],
                 rejected: list[Rejection]):
        self.root, self.meta, self.facts, self.items, self.rejected = root, meta, facts, items, rejected
        self._by_id = {it.item_id: it for it in items}

    @classmethod
    def open(cls, root: str | Path) -> "Benchmark":
        """Open a folder written by :func:`lalm_interp.bench.builder.build`."""
        root = Path(root)
        meta_path = root / "benchmark.json"
        if not meta_path.is_file():
            raise BenchmarkError(f"{str(root)!r} is not a built benchmark (no benchmark.json).\n"
                                 "  expected: a folder written by `lalm-interp bench build`\n"
                                 "  fix: build it, or finish an interrupted build by rerunning "
                                 "the same command")
        meta = _read_json(meta_path)
        if meta.get("format") != FORMAT_VERSION:
            raise BenchmarkError(f"{str(root)!r} has format {meta.get('format')!r}.\n  expected: "
                                 f"{FORMAT_VERSION}\n  fix: rebuild with this version of "
                                 "lalm-interp")
        facts = {f.fact_id: f for f in map(Fact.from_json, _read_jsonl(root / "facts.jsonl"))}
        rows = _read_jsonl(root / "items.jsonl")
        for n, d in enumerate(rows, 1):
            check_clip_key(d.get("clip") if isinstance(d, dict) else None,
                           f"{str(root / 'items.jsonl')!r} entry {n} (item {d.get('id') if isinstance(d, dict) else '?'!r})")
        items = [Item.from_json(d, root) for d in rows]
        rejected = [Rejection.from_json(d) for d in _read_jsonl(root / "rejected.jsonl")]
        return cls(root, meta, facts, items, rejected)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            try:
                return self._by_id[key]
            except KeyError:
                raise BenchmarkError(f"No item {key!r} in {self.root}.\n  expected: an id like "
                                     f"{self.items[0].item_id if self.items else '<none>'!r}\n"
                                     "  fix: list ids with [it.item_id for it in bench]") from None
        return self.items[key]

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def select(self, *, form: str | None = None, rendition: Rendition | str | None = None,
               fact_id: str | None = None) -> list[Item]:
        """Items matching every given filter."""
        r = str(rendition) if rendition is not None else None
        return [it for it in self.items if (form is None or it.form == form)
                and (r is None or str(it.rendition) == r)
                and (fact_id is None or it.fact_id == fact_id)]

    def fact(self, item: Item) -> Fact:
        return self.facts[item.fact_id]

    @property
    def renditions(self) -> tuple[Rendition, ...]:
        return tuple(Rendition.parse(r) for r in self.meta.get("renditions", ()))

    def __repr__(self) -> str:
        return (f"Benchmark({str(self.root)!r}: {len(self.facts)} facts, {len(self.items)} items, "
                f"{len(self.rejected)} rejected)")


def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise BenchmarkError(f"Cannot read {str(p)!r}: {err}.\n  expected: JSON written by the "
                             "builder\n  fix: rerun the build to rewrite it") from None


def _read_jsonl(p: Path) -> list[dict]:
    if not p.is_file():
        return []
    try:
        return [json.loads(line) for line in p.read_text("utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as err:
        raise BenchmarkError(f"Cannot read {str(p)!r}: {err}.\n  expected: JSON lines written by "
                             "the builder\n  fix: rerun the build to rewrite it") from None
