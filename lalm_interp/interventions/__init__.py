"""One intervention engine: site-addressed primitives on nnsight, an open registry of intervention
kinds, the compiler that batches their runs, and the tracing engine built on them.

* :mod:`.primitives` — :func:`read`, :func:`set_`, :func:`add`, :func:`corrupt` inside one trace;
* :mod:`.kinds` — :func:`register_kind` and the built-in kinds (Corrupt, Restore, Patch, Read);
* :class:`~lalm_interp.prompts.PreparedPrompt` (prompts layer, re-exported) — a spoken prompt as model inputs for one object;
* :mod:`.plan` / :mod:`.compile` — rows of edits, batched into forwards (:class:`Compiled`);
* :mod:`.engine` — :class:`TracePrompt` and :func:`trace_example`;
* :mod:`.results` — per-example results and their aggregate.

See ``docs/usage/interventions.md``.
"""

from .compile import Compiled, rows_per_forward
from .engine import TracePrompt, trace_example
from .kinds import Base, Kind, KindResult, kind_of, register_kind
from .plan import CorruptionPlan, Edit, Row, positions_tensor
from ..prompts import PreparedPrompt
from .primitives import add, corrupt, in_forward_order, read, set_

__all__ = ["read", "set_", "add", "corrupt", "in_forward_order", "Kind", "KindResult", "Base", "register_kind",
           "kind_of", "Edit", "Row", "CorruptionPlan", "positions_tensor", "Compiled", "rows_per_forward",
           "TracePrompt", "trace_example", "PreparedPrompt"]
