"""Layer selection from a tracing result (the paper's Table 2): the top-k layers by AIE per word
position, for editors to edit there."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..specs import SpecError


def top_layers(agg: xr.Dataset, family: str, span: str, k: int = 1) -> list[int]:
    """The ``k`` layers with the highest AIE for ``family`` at ``span`` (ties: lower layer first)."""
    if family not in agg["family"].values:
        raise SpecError(f"family {family!r} not in this tracing result; it has {list(map(str, agg['family'].values))}.")
    if span not in agg["span"].values:
        raise SpecError(f"span {span!r} not in this tracing result; it has {list(map(str, agg['span'].values))}.")
    y = agg["aie"].sel(family=family, span=span).values
    layers = np.flatnonzero(np.isfinite(y))
    if k < 1 or k > len(layers):
        raise SpecError(f"k={k}: choose 1 <= k <= {len(layers)} layers.")
    order = sorted(layers, key=lambda l: (-y[l], l))
    return sorted(int(l) for l in order[:k])


def selection_table(agg: xr.Dataset, family: str, spans: list[str], ks: tuple[int, ...] = (1, 2, 3)) -> dict:
    """{span: {k: [layers]}} for every span and k."""
    return {s: {k: top_layers(agg, family, s, k) for k in ks} for s in spans}
