"""The spoken knowledge benchmark: datasets, builder, on-disk store, known-fact filter and edit
sets, and the protected-key corpus for null-space editors.

Quick use::

    from lalm_interp.bench import load_facts, build, Benchmark
    build(load_facts("counterfact", limit=20), "bench_dir", renditions=3)
    bench = Benchmark.open("bench_dir")
    item = bench[0]; item.audio, item.words, item.subject_word_range
"""

from __future__ import annotations

from .builder import BuildReport, build, plan, relation_text
from .datasets import Fact, load_counterfact, load_facts, load_known1000
from .errors import BenchmarkError
from .store import FORMS, Benchmark, Item, Rejection

__all__ = ["Fact", "load_facts", "load_counterfact", "load_known1000", "build", "plan",
           "relation_text", "BuildReport", "Benchmark", "Item", "Rejection", "FORMS",
           "BenchmarkError"]
