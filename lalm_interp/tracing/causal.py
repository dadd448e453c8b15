"""Speech-aware causal tracing of one spoken prompt, and the average over many.

The engine lives in :mod:`lalm_interp.interventions` (:func:`trace_example`, :class:`TracePrompt`);
the results (:func:`aggregate`, :func:`families`) in :mod:`lalm_interp.interventions.results`;
this module keeps the import paths users have (``Prepared`` is :class:`TracePrompt`'s old name).
"""

from __future__ import annotations

from ..interventions.engine import TracePrompt, trace_example
from ..interventions.results import aggregate, families
from ..prompts import SpokenPrompt

Prepared = TracePrompt
"""The old name of :class:`~lalm_interp.interventions.engine.TracePrompt`."""


__all__ = ["trace_example", "Prepared", "TracePrompt", "SpokenPrompt", "aggregate", "families"]
