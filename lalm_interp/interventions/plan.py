"""The data a compiled trace runs: rows (runs) of edits, and the resolved corruption."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..sites import Site
from ..specs import Corrupt


@dataclass
class Edit:
    """Copy ``src`` row's values into this row at ``positions`` of ``site`` (time axis indices).

    kind: ``None`` for that copy; else the spec of a registered kind
    (:func:`~lalm_interp.interventions.kinds.register_kind`), whose ``apply`` makes the edit
    (``src`` is then unused unless the kind reads it)."""

    site: Site
    positions: torch.Tensor
    src: int = 0
    kind: Any = None


@dataclass
class Row:
    """One run: corrupted or not, plus edits; ``label`` identifies it in results."""

    label: dict[str, Any]
    corrupted: bool = True
    edits: list[Edit] = field(default_factory=list)


@dataclass(frozen=True)
class CorruptionPlan:
    """A resolved :class:`Corrupt`: concrete site, frame span on the site's time axis, and noise."""

    spec: Corrupt
    site: Site
    start: int
    stop: int
    replace_values: torch.Tensor | None = None  # (stop-start, C) for noise="replace"

    def noise(self, channels: int, dtype: torch.dtype, device: Any) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(self.spec.seed))
        z = torch.randn((self.stop - self.start, channels), generator=g, dtype=torch.float32)
        return z.to(dtype=dtype, device=device)


def positions_tensor(a: int, b: int) -> torch.Tensor:
    """Positions ``a, a+1, ..., b-1`` as an index tensor."""
    return torch.arange(a, b, dtype=torch.long)


__all__ = ["Edit", "Row", "CorruptionPlan", "positions_tensor"]
