"""The compiler moved to :mod:`lalm_interp.interventions.compile`; this module keeps the old import path."""

from ..interventions.compile import Compiled, copy_rows, replace_values_from, rows_per_forward
from ..interventions.plan import CorruptionPlan, Edit, Row, positions_tensor

__all__ = ["Edit", "Row", "CorruptionPlan", "Compiled", "rows_per_forward", "positions_tensor",
           "replace_values_from", "copy_rows"]
