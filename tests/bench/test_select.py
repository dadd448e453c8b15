"""Known-fact filter and edit sets (model-agnostic)."""

import pytest

from lalm_interp.bench import Benchmark, BenchmarkError
from lalm_interp.bench.select import EditSet, batch_scorer, build_edit_set, filter_known


def test_filter_known_with_a_predicate(built20):
    out, facts, _ = built20
    bench = Benchmark.open(out)
    known_ids = {facts[0].fact_id, facts[2].fact_id}
    seen = []

    def scorer(items):
        seen.append(len(items))
        return [it.fact_id in known_ids for it in items]

    res = filter_known(bench, scorer, batch_size=3)
    assert seen == [3, 1]  # 4 prompt items in batches of 3
    assert set(res.known_facts) == known_ids
    assert all(bench[i].form == "prompt" for i in res.per_item)
    res2 = filter_known(bench, batch_scorer(lambda it: it.form == "subject"),
                        forms=("prompt", "subject"), aggregate="any")
    assert len(res2.known_facts) == 4
    res3 = filter_known(bench, batch_scorer(lambda it: it.form == "subject"),
                        forms=("prompt", "subject"), aggregate="all")
    assert res3.known_facts == ()
    with pytest.raises(BenchmarkError, match="2 verdicts for 4"):
        filter_known(bench, lambda items: [True, False], batch_size=8)


def test_edit_set_is_reproducible_and_disjoint(tmp_path):
    cands = [f"cf:{i}" for i in range(1000)]
    known = [f"cf:{i}" for i in range(0, 1000, 3)]
    a = build_edit_set(cands, known, k=200, m=300, seed=1)
    b = build_edit_set(reversed(cands), list(reversed(known)), k=200, m=300, seed=1)
    c = build_edit_set(cands, known, k=200, m=300, seed=2)
    assert a == b and a != c and len(a) == 500
    assert set(a.known) <= set(known) and not set(a.known) & set(a.random)
    a.save(tmp_path / "edit.json")
    assert EditSet.load(tmp_path / "edit.json") == a
    with pytest.raises(BenchmarkError, match="Cannot draw 200 known"):
        build_edit_set(cands[:100], known, k=200, m=300)
    small = build_edit_set(cands[:100], known, k=200, m=300, allow_fewer=True)
    assert len(small.known) == 34 and len(small.random) == 66
