"""Speech-aware causal tracing of one spoken prompt, and the average over many.

For an :class:`~lalm_interp.specs.Experiment`: clean run → P_clean(o); corrupted run → P_corr(o);
restoration runs → IE(l, t) = P_restored − P_corr. Per-example results are xarray Datasets with one
variable per restoration family (dims ``layer`` × ``position`` or ``layer`` × ``span``, with frame
times and word labels as coordinates); :func:`aggregate` stacks them into labelled AIE arrays with
dims (``example``, ``family``, ``span``, ``layer``) and the stream/kind of each family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from ..adapters.base import Adapter
from ..errors import AudioInputError, SpanError
from ..inputs import DEFAULT_INSTRUCTION, RATE_HINT, TOOLKIT_RATE, build_inputs, check_words, require_rates
from ..speech.audio import _rate, check_samples, resample
from ..scoring import object_prefix, object_token_ids, teacher_forced_inputs
from ..sites import Site
from ..spans import SEQ, PositionMap, Word, as_words, position_map
from ..specs import Experiment, Restore, SpecError, window_layers
from .compile import Compiled, CorruptionPlan, Edit, Row, positions_tensor, replace_values_from


_WORD_TOL_S = 0.02
"""How far (s) a word's end may pass the clip's end (rounding of aligner times)."""


@dataclass(frozen=True)
class SpokenPrompt:
    """One example to trace: audio, word timings, subject word range, object.

    id: example id (cache key). audio: mono float samples at ``sample_rate`` Hz (e.g. from
    :func:`lalm_interp.load_audio`). words: ``Word`` s or (text, start_s, end_s), seconds.
    subject: inclusive word range of the subject. target: the object whose probability is measured.
    instruction: the fixed text instruction after the audio.
    sample_rate: the rate of ``audio`` in Hz. Required (the last field, no default:
    :class:`~lalm_interp.errors.AudioInputError` without it): ``load_audio`` returns 16 kHz, and
    :meth:`from_item` takes a benchmark item's own ``sample_rate``. Audio at another rate is
    resampled to 16 kHz when the prompt is made, so afterwards ``audio`` is always 16 kHz and
    ``sample_rate`` is 16000.

    Checked when made: the rate is given; the audio is mono, float, finite and non-empty
    (:class:`~lalm_interp.errors.AudioInputError` otherwise). :meth:`check_words` (run by
    :func:`trace_example` before anything else) checks that every timed word ends inside the clip.
    """

    id: str
    audio: np.ndarray
    words: tuple[Word, ...]
    subject: tuple[int, int]
    target: str
    instruction: str = DEFAULT_INSTRUCTION
    sample_rate: int | None = None

    def __post_init__(self) -> None:
        name = f"example {self.id!r}"
        require_rates(self.sample_rate, 1, where=f"SpokenPrompt {name}: ")
        x = self.audio.detach().cpu().numpy() if isinstance(self.audio, torch.Tensor) else np.asarray(self.audio)
        if x.ndim == 2 and 1 in x.shape:
            x = x.reshape(-1)
        if x.ndim != 1 or x.size == 0 or not np.issubdtype(x.dtype, np.floating):
            raise AudioInputError(
                f"{name}: audio of shape {tuple(x.shape)} and dtype {x.dtype}; expected a non-empty "
                "1-D float array of mono samples. Read files with lalm_interp.load_audio (mono "
                "float32), or mix down / convert first (x.mean(axis=channel_axis), int16 / 32768).")
        rate = _rate(self.sample_rate, f"{name}: sample_rate")
        check_samples(x, rate, name=name)
        object.__setattr__(self, "words", tuple(self.words))
        if rate != TOOLKIT_RATE:
            x = resample(x, rate, TOOLKIT_RATE)
            object.__setattr__(self, "sample_rate", TOOLKIT_RATE)
        object.__setattr__(self, "audio", x)

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate

    def check_words(self) -> None:
        """Raise :class:`~lalm_interp.errors.AudioInputError` naming the word, its end time and the
        clip length when a timed word ends after the clip (or has start > end)."""
        check_words(self.words, len(self.audio), self.sample_rate, name=f"example {self.id!r}",
                    tol_s=_WORD_TOL_S)

    @classmethod
    def from_item(cls, item: Any, target: str | None = None, instruction: str = DEFAULT_INSTRUCTION) -> "SpokenPrompt":
        """From a benchmark item (``lalm_interp.bench``): its audio at its ``sample_rate``, word
        timings and subject range. An object without a ``sample_rate`` raises
        :class:`~lalm_interp.errors.AudioInputError` (its rate is never guessed)."""
        if item.subject_word_range is None:
            raise SpanError(
                f"item {item.item_id}: has no subject span; trace items of form 'prompt' or 'subject'."
            )
        if any(w[1] is None or w[2] is None for w in item.words):
            raise SpanError(f"item {item.item_id}: some words have no timing; re-align the clip.")
        words = tuple(Word(w[0], float(w[1]), float(w[2])) for w in item.words)
        rate = getattr(item, "sample_rate", None)
        if rate is None:
            raise AudioInputError(
                f"SpokenPrompt.from_item: {type(item).__name__} {getattr(item, 'item_id', '?')!r} has no "
                "sample_rate, so its audio is 1 raw sample array(s) given without sample_rate. Fix: give "
                "the object a sample_rate (benchmark items have one), or build "
                f"SpokenPrompt(...) directly and {RATE_HINT}.")
        return cls(item.item_id, item.audio, words, tuple(item.subject_word_range),
                   target or item.target_true, instruction, sample_rate=rate)


class Prepared:
    """A prompt made ready to trace: inputs, position map, object tokens, resolved corruption.

    replace_audio: the clip whose activations replace the subject's for ``Corrupt(noise='replace')``,
    at ``replace_sample_rate`` Hz (required with ``replace_audio``; resampled to the model's rate)."""

    def __init__(self, model: torch.nn.Module, processor: Any, adapter: Adapter, ex: SpokenPrompt,
                 exp: Experiment, replace_audio: np.ndarray | None = None, *,
                 replace_sample_rate: int | None = None):
        if replace_audio is not None:
            require_rates(replace_sample_rate, 1, arg="replace_sample_rate", where=f"example {ex.id!r} replace_audio: ")
        self.ex = ex
        self.exp = exp
        self.adapter = adapter
        ex.check_words()
        batch = build_inputs(processor, adapter, [ex.audio], sample_rate=ex.sample_rate,
                             instruction=ex.instruction, names=[ex.id])
        self.batch = batch
        self.pm: PositionMap = position_map(adapter, batch, 0, as_words(ex.words), ex.subject)
        tok = processor.tokenizer
        self.token_ids = object_token_ids(tok, ex.target, object_prefix(adapter, batch))
        inputs, L = teacher_forced_inputs(batch, [self.token_ids], tok.pad_token_id or 0)
        self.inputs, self.L = inputs, L
        c = exp.corrupt
        site = adapter.one(c.at)
        stage = adapter.stage(site)
        try:
            a, b = self.pm.span(c.span, stage)
        except SpanError as err:
            raise SpecError(f"example {ex.id}: Corrupt.span {c.span!r}: {err}") from err
        repl = None
        if c.noise == "replace":
            if replace_audio is None:
                raise SpecError("Corrupt(noise='replace') needs replace_audio (another clip) for each example.")
            other = build_inputs(processor, adapter, [replace_audio], sample_rate=replace_sample_rate,
                                 instruction=ex.instruction, names=[f"{ex.id} replace_audio"])
            repl = replace_values_from(model, adapter, site, other.model_inputs, a, b)
        self.corruption = CorruptionPlan(c, site, a, b, repl)
        self.compiled = Compiled(model, adapter, inputs, L, self.token_ids, self.corruption, memory_mb=exp.memory_mb)

    # ------------------------------------------------------------------ positions
    def stage_of(self, site: Site) -> str:
        return self.adapter.stage(site)

    def full_length(self, site: Site) -> int:
        """Length of the site's time axis in the padded forward (all frames / all tokens)."""
        st = self.stage_of(site)
        if st == SEQ:
            return int(self.inputs["input_ids"].shape[1])
        n_mel = int(self.inputs["input_features"].shape[-1])
        return self.adapter.rate_chain.valid(st, n_mel) if st != "mel" else n_mel

    def groups(self, r: Restore, site: Site) -> list[tuple[Any, torch.Tensor]]:
        """(position key, positions) groups of a restoration family at a site of its stream."""
        st = self.stage_of(site)
        if r.positions == "all":
            return [("all", positions_tensor(0, self.full_length(site)))]
        if r.positions == "each":
            n = self.L if st == SEQ else self.pm.n_frames(st)
            return [(j, positions_tensor(j, j + 1)) for j in range(n)]
        out = []
        for name in r.positions:
            try:
                a, b = self.pm.span(name, st)
            except SpanError as err:
                raise SpecError(f"example {self.ex.id}: Restore({r.at!r}) span {name!r}: {err}") from err
            key = name if isinstance(name, str) else f"words{name[0]}-{name[1]}"
            out.append((key, positions_tensor(a, b)))
        return out

    def rows(self, r: Restore) -> list[Row]:
        a = self.adapter
        centres = a.expand(r.at)
        n = a.n_layers(r.site.stream)
        rows = []
        groups = self.groups(r, centres[0])
        for s in centres:
            layers = window_layers(s.layer, r.window, n)
            for key, pos in groups:
                edits = [Edit(s.with_layer(j), pos) for j in layers]
                rows.append(Row({"family": r.label, "layer": s.layer, "position": key}, True, edits))
        return rows

    # ------------------------------------------------------------------ coordinates
    def position_coords(self, r: Restore, site: Site, keys: list[Any]) -> dict[str, Any]:
        st = self.stage_of(site)
        if r.positions == "each":
            if st == SEQ:
                ids = self.inputs["input_ids"][0, : self.L].tolist()
                tok = self.adapter.processor.tokenizer
                toks = tok.convert_ids_to_tokens(ids)
                a0, n = self.batch.audio_start[0], self.batch.n_audio[0]
                words_tok = self.pm.word_of_frame("token")
                word = [words_tok[j - a0] if a0 <= j < a0 + n else "" for j in range(self.L)]
                s0, s1 = self.pm.span("subject", SEQ)
                return {
                    "token": ("position", toks),
                    "word": ("position", word),
                    "is_audio": ("position", [a0 <= j < a0 + n for j in range(self.L)]),
                    "is_subject": ("position", [s0 <= j < s1 for j in range(self.L)]),
                }
            s0, s1 = self.pm.span("subject", st)
            return {
                "time_s": ("position", self.pm.time_s(st)),
                "word": ("position", self.pm.word_of_frame(st)),
                "is_subject": ("position", [s0 <= j < s1 for j in range(len(keys))]),
            }
        return {}


def _p(lp: torch.Tensor, metric: str) -> torch.Tensor:
    """Probability from (B, m) object log-probs: first token, or the whole object."""
    return (lp[:, 0] if metric == "first" else lp.sum(-1)).exp()


def trace_example(model: torch.nn.Module, processor: Any, adapter: Adapter, ex: SpokenPrompt, exp: Experiment,
                  *, replace_audio: np.ndarray | None = None, replace_sample_rate: int | None = None,
                  progress: Any = None) -> xr.Dataset:
    """Run ``exp`` on one prompt; returns a Dataset with ``p_clean``/``p_corrupt`` and one IE
    variable per restoration family (``ie:<family>``) plus patched-run probabilities (``p:<name>``).

    The prompt's audio is at ``ex.sample_rate`` (see :class:`SpokenPrompt`); ``replace_audio`` (for
    ``Corrupt(noise='replace')``) is at ``replace_sample_rate`` Hz: required with ``replace_audio``
    (:class:`~lalm_interp.errors.AudioInputError` without it)."""
    exp.validate(adapter)
    prep = Prepared(model, processor, adapter, ex, exp, replace_audio, replace_sample_rate=replace_sample_rate)
    base = prep.compiled.base()
    p_clean, p_corr = (float(v) for v in _p(base, exp.metric))
    data: dict[str, Any] = {}
    coords: dict[str, Any] = {}
    for r in exp.restores:
        rows = prep.rows(r)
        lp = prep.compiled.run(rows, reuse_encoder=exp.reuse_encoder, progress=progress)
        p = _p(lp, exp.metric).numpy()
        layers = sorted({row.label["layer"] for row in rows})
        keys = list(dict.fromkeys(row.label["position"] for row in rows))
        grid = np.full((len(layers), len(keys)), np.nan)
        for row, v in zip(rows, p):
            grid[layers.index(row.label["layer"]), keys.index(row.label["position"])] = v - p_corr
        fam = r.label
        ldim, pdim = f"layer:{fam}", f"position:{fam}"
        data[f"ie:{fam}"] = ((ldim, pdim), grid)
        coords[ldim] = layers
        coords[pdim] = [str(k) for k in keys]
        for name, (dim, vals) in prep.position_coords(r, prep.adapter.expand(r.at)[0], keys).items():
            coords[f"{name}:{fam}"] = (pdim, vals)
    for pt in exp.patches:
        site = adapter.one(pt.at)
        if pt.positions == "all":
            pos = positions_tensor(0, prep.full_length(site))
        else:
            st = prep.stage_of(site)
            try:
                pos = torch.cat([positions_tensor(*prep.pm.span(n, st)) for n in pt.positions])
            except SpanError as err:
                raise SpecError(f"example {ex.id}: Patch({pt.at!r}) positions: {err}") from err
        src = 0 if pt.source == "clean" else 1
        row = Row({"run": pt.name}, corrupted=(pt.target == "corrupt"), edits=[Edit(site, pos, src)])
        lp = prep.compiled.run([row], reuse_encoder=exp.reuse_encoder)
        data[f"p:{pt.name}"] = ((), float(_p(lp, exp.metric)[0]))
    ds = xr.Dataset(data, coords=coords)
    ds["p_clean"] = p_clean
    ds["p_corrupt"] = p_corr
    ds.attrs.update(
        example=ex.id,
        target=ex.target,
        target_tokens=np.asarray(prep.token_ids, dtype=np.int64),
        words=" ".join(w.text for w in prep.pm.words),
        word_start_s=np.asarray([w.start_s for w in prep.pm.words]),
        word_end_s=np.asarray([w.end_s for w in prep.pm.words]),
        subject_words=np.asarray(ex.subject, dtype=np.int64),
        corrupt_span=np.asarray([prep.corruption.start, prep.corruption.stop], dtype=np.int64),
        experiment=exp.to_json(),
        adapter=f"{adapter.name}@{adapter.spec.version}",
        forwards=prep.compiled.forwards,
    )
    return ds


def families(ds: xr.Dataset) -> list[str]:
    return [str(k)[3:] for k in ds.data_vars if str(k).startswith("ie:")]


def aggregate(results: Sequence[xr.Dataset], exp: Experiment) -> xr.Dataset:
    """Stack per-example span-mode results into AIE arrays.

    Returns a Dataset with ``ie`` (example, family, span, layer) — NaN where a family's stream has
    fewer layers — ``aie`` (family, span, layer) = mean over examples, and ``p_clean`` /
    ``p_corrupt`` (example). Families restored at ``each`` position are summarised by their
    subject-span mean (span ``subject_mean``) when the coordinates allow it.
    """
    if not results:
        raise SpecError("no per-example results to aggregate; trace at least one example.")
    fams = [r.label for r in exp.restores]
    spans: list[str] = []
    max_layer = 0
    for ds in results:
        for f in fams:
            spans.extend(str(s) for s in ds[f"position:{f}"].values if _is_span_mode(exp, f))
            max_layer = max(max_layer, int(ds[f"layer:{f}"].max()) + 1)
    if any(not _is_span_mode(exp, f) for f in fams):
        spans.append("subject_mean")
    spans = list(dict.fromkeys(spans)) or ["all"]
    ie = np.full((len(results), len(fams), len(spans), max_layer), np.nan)
    for i, ds in enumerate(results):
        for j, f in enumerate(fams):
            da = ds[f"ie:{f}"]
            if not _is_span_mode(exp, f):
                subj = f"is_subject:{f}"
                if subj in ds.coords and bool(ds[subj].values.any()):
                    mean = da.values[:, ds[subj].values.astype(bool)].mean(axis=1)
                    for layer, v in zip(ds[f"layer:{f}"].values, mean):
                        ie[i, j, spans.index("subject_mean"), int(layer)] = v
                continue
            for s in da[f"position:{f}"].values:
                k = spans.index(str(s))
                for layer, v in zip(ds[f"layer:{f}"].values, da.sel({f"position:{f}": s}).values):
                    ie[i, j, k, int(layer)] = v
    streams = [Site.parse(r.at).stream for r in exp.restores]
    kinds = [Site.parse(r.at).component for r in exp.restores]
    out = xr.Dataset(
        {
            "ie": (("example", "family", "span", "layer"), ie),
            "p_clean": (("example",), [float(ds["p_clean"]) for ds in results]),
            "p_corrupt": (("example",), [float(ds["p_corrupt"]) for ds in results]),
        },
        coords={
            "example": [ds.attrs["example"] for ds in results],
            "family": fams,
            "span": spans,
            "layer": np.arange(max_layer),
            "stream": ("family", streams),
            "kind": ("family", kinds),
        },
    )
    out["aie"] = out["ie"].mean("example")
    out.attrs["experiment"] = exp.to_json()
    return out


def _is_span_mode(exp: Experiment, family: str) -> bool:
    for r in exp.restores:
        if r.label == family:
            return r.positions != "each"
    return False
