"""ES/PS/NS/Score arithmetic and the Table-1 rendering."""

import pytest

from lalm_interp.evaluation import case_success, harmonic_mean, summarise, table


def test_harmonic_mean_reproduces_the_paper_rows():
    assert f"{harmonic_mean(95.20, 78.70, 64.72):.2f}" == "77.60"
    assert f"{harmonic_mean(20.4, 24.4, 76.18):.2f}" == "29.09"
    assert harmonic_mean(0.0, 50.0, 50.0) == 0.0


def rec(edit, paras, neighs):
    r = lambda n, t: {"logp_new": n, "logp_true": t}
    return {"edit": r(*edit), "paraphrase": [r(*p) for p in paras], "neighbourhood": [r(*x) for x in neighs]}


def test_case_success_and_summary():
    a = rec((-1, -2), [(-1, -2), (-3, -2)], [(-5, -1), (-1, -5)])  # ES 1, PS .5, NS .5
    b = rec((-3, -2), [(-1, -2)], [])  # ES 0, PS 1, NS none
    assert case_success(a) == {"es": 1.0, "ps": 0.5, "ns": 0.5}
    assert case_success(b)["ns"] is None
    s = summarise([{"after": a}, {"after": b}, {"error": "x"}])
    assert s["ES"] == pytest.approx(50.0) and s["PS"] == pytest.approx(75.0) and s["NS"] == pytest.approx(50.0)
    assert s["Score"] == pytest.approx(harmonic_mean(50, 75, 50))
    assert s["n_cases"] == 2


def test_table_has_the_paper_shape():
    res = [{"mod": "Audio", "label": "ROME", "meta": {"model": "m", "bench": "b"},
            "summary": {"ES": 95.2, "PS": 78.7, "NS": 64.72, "Score": 77.6},
            "baseline": {"ES": 20.4, "PS": 24.4, "NS": 76.18, "Score": 29.09}}]
    out = table(res).splitlines()
    assert out[0] == "| Mod. | Method | Score | ES | PS | NS |"
    assert out[2] == "| – | Unedited | 29.09 | 20.40 | 24.40 | 76.18 |"
    assert out[3] == "| Audio | ROME | 77.60 | 95.20 | 78.70 | 64.72 |"
