"""Speech-aware causal tracing: specs (``lalm_interp.specs``) compiled into batched nnsight traces."""

from .causal import SpokenPrompt, aggregate, families, trace_example
from .compile import Compiled, Edit, Row, rows_per_forward

__all__ = ["SpokenPrompt", "trace_example", "aggregate", "families", "Compiled", "Edit", "Row", "rows_per_forward"]
