"""Shared fixtures of the scale-out tests: one local 2-CPU Ray instance for the whole session
(each module's executor is closed at the end of its module, so the next one fits), and the
organism with a tiny spoken benchmark of its own facts for the evaluation tests."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(scope="module", autouse=True)
def _executors_on_one_thread(one_thread):
    """Every scale-out test module runs torch on one thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray")
    tmp = tempfile.mkdtemp(prefix="lalm_ray_", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def organism():
    """``lalm_interp.load("organism")`` (the model the Ray workers load from the same spec)."""
    import lalm_interp

    return tuple(lalm_interp.load("organism"))


@pytest.fixture(scope="session")
def organism_bench(tmp_path_factory) -> Path:
    """Three of the organism's own CounterFact facts, spoken (1 rendition, 1 paraphrase, 1 neighbour)."""
    pytest.importorskip("espeakng_loader")
    import lalm_interp
    from lalm_interp.bench import build
    from lalm_interp.organism.export import recipe_of
    from lalm_interp.organism.facts import choose_facts

    recipe = recipe_of(Path(lalm_interp.__file__).parent / "assets" / "organism")
    out = tmp_path_factory.mktemp("organism-bench")
    build(choose_facts(recipe)[:3], out, renditions=[recipe.train_renditions[0]], max_paraphrases=1,
          max_neighbours=1, workers=1, progress=False, source="counterfact")
    return out
