"""The tracing engine: one spoken prompt under one :class:`~lalm_interp.specs.Experiment`.

For an experiment: clean run → P_clean(o); corrupted run → P_corr(o); then every intervention of the
experiment adds its runs through its registered kind (:mod:`~lalm_interp.interventions.kinds`):
a :class:`Restore` one run per (centre layer, position group), IE(l, t) = P_restored − P_corr; a
:class:`Patch` one patched run; kinds of your own whatever they define. :func:`trace_example`
knows no kind by name: it validates, collects rows, runs them through :class:`Compiled` and asks
each kind for its result variables.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from ..adapters.base import Adapter
from ..errors import SpanError
from ..inputs import PromptBatch, build_inputs, require_rates
from ..loading import model_parts
from ..prompts import PreparedPrompt, SpokenPrompt
from ..sites import Site
from ..spans import SEQ, PositionMap
from ..specs import Experiment, Restore, SpecError
from .compile import Compiled, replace_values_from
from .kinds import Base, KindResult, kind_of
from .plan import CorruptionPlan, Row, positions_tensor
from .results import FamilyGrid, example_result


class TracePrompt:
    """A spoken prompt made ready to trace under an experiment: the
    :class:`~lalm_interp.prompts.PreparedPrompt` of its object (``.prompt``; its
    ``batch``, ``pm``, ``token_ids``, ``inputs`` and ``L`` are attributes here too), the resolved
    corruption and its :class:`Compiled` runner (``.compiled``).
    (``lalm_interp.tracing.causal.Prepared`` is the old name.)

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
        self.prompt = PreparedPrompt.make(processor, adapter, ex, ex.target)
        self.batch: PromptBatch = self.prompt.batch
        self.pm: PositionMap = self.prompt.pm
        self.token_ids: list[int] = self.prompt.token_ids
        self.inputs, self.L = inputs, L = self.prompt.inputs, self.prompt.L
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
        self.compiled = Compiled(model, adapter, inputs, L, self.token_ids, self.corruption, memory_mb=exp.memory_mb,
                                 savings=exp.savings)

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

    def span_positions(self, site: Site, spans: Sequence[Any]) -> torch.Tensor:
        """Positions of the named spans / word ranges ``spans`` on ``site``'s time axis, concatenated
        (a :class:`~lalm_interp.errors.SpanError` when one does not exist in this prompt)."""
        st = self.stage_of(site)
        return torch.cat([positions_tensor(*self.pm.span(n, st)) for n in spans])

    def rows(self, spec: Any) -> list[Row]:
        """The runs ``spec`` adds (one per centre layer and position group for a :class:`Restore`),
        from its registered kind."""
        return kind_of(spec).rows(spec, self)

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


def validate(exp: Experiment, adapter: Adapter) -> None:
    """Check every intervention of ``exp`` against ``adapter`` through its kind, before any compute."""
    for spec in exp.specs:
        kind_of(spec).validate(spec, adapter, exp)


def trace_example(model: Any, processor: Any = None, adapter: Adapter | None = None, ex: SpokenPrompt | None = None,
                  exp: Experiment | None = None, *, replace_audio: np.ndarray | None = None, replace_sample_rate: int | None = None,
                  progress: Any = None) -> xr.DataTree:
    """Run ``exp`` on one prompt; returns its result (:func:`~lalm_interp.interventions.results.example_result`):
    an ``xr.DataTree`` whose root holds ``p_clean``/``p_corrupt``, the patched-run probabilities
    (``p:<name>``) and the scalars of other registered kinds, with one child node per restoration
    family holding ``ie`` (``layer`` × ``position``).

    The prompt's audio is at ``ex.sample_rate`` (see :class:`SpokenPrompt`); ``replace_audio`` (for
    ``Corrupt(noise='replace')``) is at ``replace_sample_rate`` Hz: required with ``replace_audio``
    (:class:`~lalm_interp.errors.AudioInputError` without it).

    Two calling forms: ``trace_example(lm, ex, exp)`` with a model handle (``lalm_interp.load``), or
    ``trace_example(model, processor, adapter, ex, exp)``."""
    model, processor, adapter, ex, exp = model_parts(model, processor, adapter, ex, exp, what="trace_example")
    if ex is None or exp is None:
        raise SpecError("trace_example needs a prompt and an experiment: trace_example(lm, prompt, exp) or "
                        "trace_example(model, processor, adapter, prompt, exp).")
    validate(exp, adapter)
    prep = TracePrompt(model, processor, adapter, ex, exp, replace_audio, replace_sample_rate=replace_sample_rate)
    base_lp = prep.compiled.base()
    p_clean, p_corr = (float(v) for v in _p(base_lp, exp.metric))
    base = Base(p_clean, p_corr)
    grids: list[FamilyGrid] = []
    scalars: dict[str, float] = {}
    for spec in (*exp.restores, *exp.patches, *exp.interventions):
        kind = kind_of(spec)
        rows = kind.rows(spec, prep)
        if not rows:
            continue
        lp = prep.compiled.run(rows, reuse_encoder=exp.reuse_encoder,
                               progress=progress if isinstance(spec, Restore) else None)
        out: KindResult = kind.results(spec, prep, rows, _p(lp, exp.metric).numpy(), base)
        grids.extend(out.grids)
        scalars.update(out.scalars)
    attrs = dict(
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
    return example_result(grids, {"p_clean": p_clean, "p_corrupt": p_corr, **scalars}, attrs)


__all__ = ["TracePrompt", "trace_example", "validate"]
