"""Errors of the benchmark subsystem (docs page ``docs/errors/benchmark.md``)."""

from __future__ import annotations

from ..errors import LalmInterpError


class BenchmarkError(LalmInterpError, ValueError):
    """A dataset that does not parse, a benchmark folder that is missing or inconsistent, an edit
    set that cannot be drawn."""

    page = "benchmark"
