"""Speech-aware causal tracing of one spoken prompt, and the average over many.

For an :class:`~lalm_interp.specs.Experiment`: clean run → P_clean(o); corrupted run → P_corr(o);
restoration runs → IE(l, t) = P_restored − P_corr. Per-example results are xarray Datasets with one
variable per restoration family (dims ``layer`` × ``position`` or ``layer`` × ``span``, with frame
times and word labels as coordinates); :func:`aggregate` stacks them into labelled AIE arrays with
dims (``example``, ``family``, ``span``, ``layer``) and the stream/kind of each family.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from ..adapters.base import Adapter
from ..errors import SpanError
from ..inputs import build_inputs, require_rates
from ..scoring import object_prefix, object_token_ids, teacher_forced_inputs
from ..sites import Site
from ..spans import SEQ, PositionMap, as_words, position_map
from ..specs import Experiment, Restore, SpecError, window_layers
from ..prompts import SpokenPrompt
from .compile import Compiled, CorruptionPlan, Edit, Row, positions_tensor, replace_values_from


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
