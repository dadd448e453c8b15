"""Fact choice and the train/eval selection rules (no audio needed)."""

from __future__ import annotations

from collections import Counter

from lalm_interp.bench.store import Item
from lalm_interp.organism.facts import choose_facts, corpus, fitting, select
from lalm_interp.organism.recipe import Recipe
from lalm_interp.speech.tts import Rendition, WordSpan

R = Recipe(train_renditions=("en-us:r175:p50", "en-us+f2:r165:p60"), heldout_renditions=("en-gb-x-rp+m2:r175:p40",))


def item(fact: str, form: str, text: str, obj: str, r: str, n_samples: int = 16000) -> Item:
    words = tuple(WordSpan(w, 0.1 * k, 0.1 * k + 0.09) for k, w in enumerate(text.split()))
    return Item(f"{fact}/{form}/0/{r}", fact, form, 0, text, Rendition.parse(r), words,
                (0, 0) if form != "neighbourhood" else None, obj, None, "k", n_samples)


def test_subjects_come_with_all_their_facts():
    facts = choose_facts(Recipe(n_subjects=10))
    per = Counter(f.subject for f in facts)
    assert len(per) == 10 and min(per.values()) >= 3
    assert choose_facts(Recipe(n_subjects=10)) == facts  # fixed order, no seed involved
    assert {f.subject for f in choose_facts(Recipe(n_subjects=5))} <= set(per)
    texts = corpus(facts, "Complete the sentence.")
    assert all(f.target_true in texts for f in facts)


def test_selection_rules():
    rs = list(R.train_renditions)
    items = []
    for r in rs + list(R.heldout_renditions):
        items += [item("counterfact:1", "prompt", "The twin city of Beirut is", "Istanbul", r),
                  # a neighbourhood prompt with the same text but another object: the edit prompt wins
                  item("counterfact:2", "neighbourhood", "The twin city of Beirut is", "Paris", r),
                  item("counterfact:3", "neighbourhood", "The twin city of London is", "Istanbul", r),
                  item("counterfact:1", "paraphrase", "Beirut is twinned with", "Istanbul", r)]
    # too long in one training rendition: dropped in every rendition
    items += [item("counterfact:4", "prompt", "Long prompt here", "X", rs[0], n_samples=60000),
              item("counterfact:4", "prompt", "Long prompt here", "X", rs[1])]
    sel = select(items, R, max_samples=48000)
    assert {(it.fact_id, it.form) for it in sel.train} == {("counterfact:1", "prompt"), ("counterfact:3", "neighbourhood")}
    assert len(sel.train) == 2 * len(rs)
    assert len(sel.groups["paraphrase"]) == len(rs)  # reported, not trained
    assert len(sel.groups["heldout_edit"]) == 1 and len(sel.groups["heldout_neighbourhood"]) == 1
    reasons = "\n".join(sel.dropped.values())
    assert "'Istanbul', not 'Paris'" in reasons and "longer than the 3 s window" in reasons
    assert all(not k.startswith("counterfact:4") or "window" in v for k, v in sel.dropped.items())


def test_fitting_uses_the_processor_window():
    class FE:
        n_samples = 48000

    class P:
        feature_extractor = FE()

    a, b = item("counterfact:1", "prompt", "a b", "X", "en-us", 48000), item("counterfact:2", "prompt", "a b", "X", "en-us", 48001)
    assert fitting([a, b], P()) == [a]
