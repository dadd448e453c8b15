"""Intervention kinds: an open registry of what an experiment can do to a model.

A *kind* tells the engine how one spec type runs (pyvene's ``Intervention`` classes are the
model). The engine (:func:`~lalm_interp.interventions.engine.trace_example`, the compiler) knows
no spec type by name: for every spec of an :class:`~lalm_interp.specs.Experiment` it asks the
registry for its kind and calls

* ``validate(spec, adapter, exp)`` — raise :class:`~lalm_interp.specs.SpecError` before any compute;
* ``rows(spec, prompt)`` — the runs the spec adds (:class:`~lalm_interp.interventions.plan.Row`
  objects whose edits carry the spec: ``Edit(site, positions, kind=spec)``);
* ``apply(spec, w, adapter, site, edits)`` — inside the trace, make this spec's edits at ``site``
  (``edits``: ``(batch row, Edit)`` pairs of one forward) with the primitives of
  :mod:`~lalm_interp.interventions.primitives`;
* ``results(spec, prompt, rows, p, base)`` — the result variables of those runs
  (:class:`KindResult`: IE grids and scalars), from the probabilities ``p`` of its rows;
* ``result_variables(spec)`` — the names of the scalars it produces; ``reads(spec, adapter)`` —
  sites whose values it records from the clean/corrupt runs;
* ``corrupt(plan, w, adapter, rows)`` — for the kind of the experiment's ``corrupt`` spec only:
  corrupt those batch rows as the resolved :class:`~lalm_interp.interventions.plan.CorruptionPlan` says.

Corrupt, Restore, Patch and Read are registered here like any other kind. A kind of your own::

    @register_kind
    @dataclass(frozen=True)
    class Scale:                      # multiply a site's values over a span in the corrupted run
        at: str
        factor: float = 0.0
        positions: tuple = ("subject",)
        name: str = "scaled"

        def validate(self, adapter, exp): adapter.one(self.at)
        def rows(self, prompt):
            site = prompt.adapter.one(self.at)
            return [Row({"run": self.name}, True, [Edit(site, prompt.span_positions(site, self.positions), kind=self)])]
        def apply(self, w, adapter, site, edits):
            for row, e in edits:
                set_(w, adapter, site, read(w, adapter, site, e.positions, row) * self.factor, e.positions, row)
        def results(self, prompt, rows, p, base): return KindResult(scalars={f"p:{self.name}": float(p[0])})

    Experiment("x", interventions=(Scale("text.layers.1.mlp"),))

``register_kind(cls)`` takes such a class (the spec is its own kind, as in pyvene), or
``register_kind(SpecType, kind)`` a plain spec dataclass and a :class:`Kind` object. Either way the
class is also registered for JSON (:func:`~lalm_interp.specs.register_spec`), so experiments using
it round-trip through ``Experiment.to_json`` / ``from_json`` once the defining module is imported.
See ``docs/usage/interventions.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..adapters.base import Adapter
from ..errors import SpanError
from ..sites import Site
from ..specs import Corrupt, Experiment, Patch, Read, Restore, SpecError, register_spec, window_layers
from .plan import CorruptionPlan, Edit, Row, positions_tensor
from .primitives import corrupt, read, set_
from .results import FamilyGrid, positions_mode


@dataclass
class KindResult:
    """What one spec contributes to an example's result: IE grids (one per family) and scalars
    (e.g. ``p:<patch name>``)."""

    grids: list[FamilyGrid] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Base:
    """The reference runs of one example: P(object) clean and corrupted, under the experiment's metric."""

    p_clean: float
    p_corrupt: float


class Kind:
    """How the engine runs one spec type. Every method takes the spec first; the defaults do
    nothing (a kind overrides what it needs)."""

    def validate(self, spec: Any, adapter: Adapter, exp: Experiment) -> None:
        v = getattr(spec, "validate", None)
        if v is not None:
            v(adapter, exp)

    def rows(self, spec: Any, prompt: Any) -> list[Row]:
        return []

    def apply(self, spec: Any, w: Any, adapter: Adapter, site: Site, edits: list[tuple[int, Edit]]) -> None:
        raise SpecError(f"{type(spec).__name__} made edits at {site} but its kind has no apply(); "
                        "define apply(spec, w, adapter, site, edits) (docs/usage/interventions.md).")

    def results(self, spec: Any, prompt: Any, rows: Sequence[Row], p: np.ndarray, base: Base) -> KindResult:
        return KindResult()

    def result_variables(self, spec: Any) -> list[str]:
        return []

    def reads(self, spec: Any, adapter: Adapter) -> list[Site]:
        return []


class _SelfKind(Kind):
    """The kind of a spec class that implements the protocol itself (``spec.rows(prompt)`` ...)."""

    def rows(self, spec: Any, prompt: Any) -> list[Row]:
        f = getattr(spec, "rows", None)
        return list(f(prompt)) if f is not None else []

    def apply(self, spec: Any, w: Any, adapter: Adapter, site: Site, edits: list[tuple[int, Edit]]) -> None:
        if not hasattr(spec, "apply"):
            super().apply(spec, w, adapter, site, edits)
        spec.apply(w, adapter, site, edits)

    def results(self, spec: Any, prompt: Any, rows: Sequence[Row], p: np.ndarray, base: Base) -> KindResult:
        f = getattr(spec, "results", None)
        return f(prompt, rows, p, base) if f is not None else KindResult()

    def result_variables(self, spec: Any) -> list[str]:
        f = getattr(spec, "result_variables", None)
        return list(f()) if f is not None else []

    def reads(self, spec: Any, adapter: Adapter) -> list[Site]:
        f = getattr(spec, "reads", None)
        return list(f(adapter)) if f is not None else []


KINDS: dict[type, Kind] = {}
"""Spec type → its kind: the registry the engine dispatches through."""


def register_kind(spec_type: type, kind: "Kind | None" = None) -> type:
    """Register ``spec_type`` (a frozen dataclass) with ``kind``, or — without ``kind``, e.g. as a
    class decorator — as a spec that implements the protocol itself. Returns ``spec_type``.
    Registering again replaces the kind (re-running a notebook cell is fine)."""
    register_spec(spec_type)
    KINDS[spec_type] = kind if kind is not None else _SelfKind()
    return spec_type


def kind_of(spec: Any) -> Kind:
    """The registered kind of ``spec`` (a :class:`SpecError` naming the fix when there is none)."""
    try:
        return KINDS[type(spec)]
    except KeyError:
        raise SpecError(f"{type(spec).__name__} is not a registered intervention kind; register it with "
                        "lalm_interp.interventions.register_kind (docs/usage/interventions.md#your-own-kinds)."
                        ) from None


# ------------------------------------------------------------------------------ the built-in kinds
def apply_corruption(w: Any, adapter: Adapter, plan: CorruptionPlan, rows: torch.Tensor) -> None:
    """Corrupt ``plan.site`` over ``[plan.start, plan.stop)`` for ``rows`` (inside a trace of ``w``):
    gaussian: + (scale·σ)·z with σ the clean row 0's std over the span (or the fixed σ); zero: 0;
    replace: another clip's values there."""
    span = (plan.start, plan.stop)
    spec = plan.spec
    if spec.noise == "gaussian":
        x = read(w, adapter, plan.site)
        z = plan.noise(x.shape[-1], x.dtype, x.device)
        corrupt(w, adapter, plan.site, span, z, rows=rows, scale=spec.scale, sigma=spec.sigma)
    elif spec.noise == "zero":
        set_(w, adapter, plan.site, 0, span, rows=rows)
    elif spec.noise == "replace":
        if plan.replace_values is None:
            raise SpecError("Corrupt(noise='replace') needs replace_audio= given to the tracer.")
        set_(w, adapter, plan.site, plan.replace_values, span, rows=rows)


class CorruptKind(Kind):
    """The experiment's corruption. It adds no runs of its own: the compiler hands it the corrupted
    rows of every forward at the corruption site (:meth:`corrupt`)."""

    def corrupt(self, plan: CorruptionPlan, w: Any, adapter: Adapter, rows: torch.Tensor) -> None:
        """Corrupt ``rows`` as ``plan`` (the spec resolved for this prompt) says: :func:`apply_corruption`."""
        apply_corruption(w, adapter, plan, rows)


class RestoreKind(Kind):
    """One run per (centre layer, position group): copy the clean row's values over the window of
    layers around the centre; result: the family's IE grid, P_restored − P_corrupt."""

    def rows(self, spec: Restore, prompt: Any) -> list[Row]:
        a = prompt.adapter
        centres = a.expand(spec.at)
        n = a.n_layers(spec.site.stream)
        rows = []
        groups = prompt.groups(spec, centres[0])
        for s in centres:
            layers = window_layers(s.layer, spec.window, n)
            for key, pos in groups:
                edits = [Edit(s.with_layer(j), pos) for j in layers]
                rows.append(Row({"family": spec.label, "layer": s.layer, "position": key}, True, edits))
        return rows

    def results(self, spec: Restore, prompt: Any, rows: Sequence[Row], p: np.ndarray, base: Base) -> KindResult:
        layers = sorted({row.label["layer"] for row in rows})
        keys = list(dict.fromkeys(row.label["position"] for row in rows))
        grid = np.full((len(layers), len(keys)), np.nan)
        for row, v in zip(rows, p):
            grid[layers.index(row.label["layer"]), keys.index(row.label["position"])] = v - base.p_corrupt
        coords = prompt.position_coords(spec, prompt.adapter.expand(spec.at)[0], keys)
        return KindResult(grids=[FamilyGrid(spec.label, spec.at, positions_mode(spec.positions), layers,
                                            [str(k) for k in keys], grid, coords)])


class PatchKind(Kind):
    """One run: the source run's values copied into the target run at a site and positions;
    result: ``p:<name>``, P(object) of the patched run."""

    def rows(self, spec: Patch, prompt: Any) -> list[Row]:
        site = prompt.adapter.one(spec.at)
        if spec.positions == "all":
            pos = positions_tensor(0, prompt.full_length(site))
        else:
            try:
                pos = prompt.span_positions(site, spec.positions)
            except SpanError as err:
                raise SpecError(f"example {prompt.ex.id}: Patch({spec.at!r}) positions: {err}") from err
        src = 0 if spec.source == "clean" else 1
        return [Row({"run": spec.name}, corrupted=(spec.target == "corrupt"), edits=[Edit(site, pos, src)])]

    def results(self, spec: Patch, prompt: Any, rows: Sequence[Row], p: np.ndarray, base: Base) -> KindResult:
        return KindResult(scalars={f"p:{spec.name}": float(p[0])})

    def result_variables(self, spec: Patch) -> list[str]:
        return [f"p:{spec.name}"]


class ReadKind(Kind):
    """No runs: the values at the matching sites are read from the clean/corrupt reference runs
    (:meth:`Compiled.base` with ``reads=``) and written to the activation cache by the run."""

    def reads(self, spec: Read, adapter: Adapter) -> list[Site]:
        return adapter.expand(spec.at)


register_kind(Corrupt, CorruptKind())
register_kind(Restore, RestoreKind())
register_kind(Patch, PatchKind())
register_kind(Read, ReadKind())


__all__ = ["Kind", "KindResult", "Base", "KINDS", "register_kind", "kind_of", "CorruptKind", "RestoreKind",
           "PatchKind", "ReadKind", "apply_corruption"]
