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
    assert case_success(a) == {"es": 1.0, "ps": 0.5, "ns": 0.5, "reached": None}
    assert case_success(b)["ns"] is None
    s = summarise([{"after": a}, {"after": b}, {"error": "x"}])
    assert s["ES"] == pytest.approx(50.0) and s["PS"] == pytest.approx(75.0) and s["NS"] == pytest.approx(50.0)
    assert s["Score"] == pytest.approx(harmonic_mean(50, 75, 50))
    assert s["n_cases"] == 2
    assert (s["n_paraphrase"], s["n_neighbourhood"], s["n_paraphrase_skipped"]) == (3, 2, 0)


def test_summary_counts_skipped_prompts_and_the_reached_rate():
    a = rec((-1, -2), [(-1, -2)], [(-5, -1)])
    a["edit"]["reached"] = True
    a["paraphrase"].append({"id": "long", "skipped": "audio longer than the encoder window"})
    b = rec((-1, -2), [], [(-5, -1)])
    b["edit"]["reached"] = False
    b["neighbourhood"].append({"id": "long2", "skipped": "audio longer than the encoder window"})
    s = summarise([{"after": a}, {"after": b}])
    assert s["ES"] == 100.0 and s["reached"] == 50.0  # ES counts both, only one says target_new top-1
    assert (s["n_paraphrase"], s["n_paraphrase_skipped"]) == (1, 1)
    assert (s["n_neighbourhood"], s["n_neighbourhood_skipped"]) == (2, 1)


def test_edit_sizes_median_over_every_edited_weight():
    from lalm_interp.evaluation import edit_sizes

    edits = [{"changes": [{"module": "a", "delta_rel": 1.0}, {"module": "b", "delta_rel": 3.0}]},
             {"changes": [{"module": "a", "delta_rel": 2.0}], "info": {"layers": [{"leak_total": 0.2}]}},
             {"changes": [], "info": {"dW_rel": {"a": 10.0}, "audio": {"leak_total": 0.7}}}]
    s = edit_sizes(edits)
    assert s["dW_rel_median"] == 2.5 and s["dW_rel_max"] == 10.0  # info["dW_rel"] wins over changes
    assert s["leak_max"] == 0.7
    assert edit_sizes([]) == {"dW_rel_median": None, "dW_rel_max": None, "leak_max": None}


def test_table_has_the_paper_shape():
    res = [{"mod": "Audio", "label": "ROME", "meta": {"model": "m", "bench": "b"},
            "summary": {"ES": 95.2, "PS": 78.7, "NS": 64.72, "Score": 77.6},
            "baseline": {"ES": 20.4, "PS": 24.4, "NS": 76.18, "Score": 29.09}}]
    out = table(res).splitlines()
    assert out[0].startswith("| Mod. | Method | Score | ES | PS | NS |")  # the paper's columns first
    assert out[0].endswith("| reached | n cases | n para | n neigh | median ‖ΔW‖/‖W‖ |")
    assert out[2] == "| – | Unedited | 29.09 | 20.40 | 24.40 | 76.18 | – | – | – | – | – |"
    assert out[3] == "| Audio | ROME | 77.60 | 95.20 | 78.70 | 64.72 | – | – | – | – | – |"
    res[0]["summary"].update(reached=50.0, n_cases=12, n_paraphrase=6, n_paraphrase_skipped=6, n_neighbourhood=12,
                             n_neighbourhood_skipped=0, dW_rel_median=0.4321)
    assert table(res).splitlines()[3] == ("| Audio | ROME | 77.60 | 95.20 | 78.70 | 64.72 | 50.00 | 12 | 6 (+6 skipped) | "
                                          "12 | 0.432 |")
