"""Subject-keyed knowledge: noise on the subject frames at conv2 destroys the fact, noise on an
equally long non-subject span does not, on 20 known facts of the shipped organism."""

from __future__ import annotations

import pytest

from lalm_interp.organism.evaluate import corruption_effect, non_subject_span
from lalm_interp.organism.recipe import Recipe


@pytest.fixture(scope="module")
def effect(organism, manifest, subset_items):
    from lalm_interp.bench import load_facts
    from lalm_interp.organism.facts import choose_facts

    model, processor, adapter = organism
    r = Recipe.from_json(manifest["recipe"])
    rel_of = {f.fact_id: f.relation_id for f in choose_facts(r)}
    # the relation's objects: every object the organism was trained on for that relation
    facts = {f.fact_id: f for f in load_facts("counterfact")}
    rel_tok: dict[str, set[int]] = {}
    for fid in manifest["data"]["fact_ids"]:
        f = facts[fid]
        for obj in [f.target_true] + [o for _, o in f.neighbourhood]:
            rel_tok.setdefault(f.relation_id, set()).add(processor.tokenizer(obj, add_special_tokens=False)["input_ids"][0])
    known = [it for it, e in zip(subset_items, manifest["eval_subset"]) if e["role"] == "known"]
    assert len(known) == 20
    return corruption_effect(model, processor, adapter, known, rel_tok, rel_of, seed=0, instruction=r.instruction)


def test_subject_noise_at_conv2_halves_p_object(effect):
    assert effect.p_clean > 0.5
    assert effect.p_subject <= 0.5 * effect.p_clean


def test_non_subject_noise_keeps_an_object_of_the_relation(effect):
    # the model still answers with an object of the right relation for most facts (measured 0.78-0.89
    # over noise seeds on these 20; 0.76 over 60 known facts) ...
    assert effect.top1_in_relation_other >= 0.7
    # ... and the non-subject span hurts the fact far less than the subject span
    assert effect.p_other > effect.p_subject


def test_subject_noise_keeps_mass_on_the_relation(effect):
    # most of the mass stays on the relation's objects when the subject is gone (measured 0.61-0.69)
    assert effect.rel_subject >= 0.5


def test_non_subject_span_is_as_long_and_disjoint():
    assert non_subject_span((10, 20), 50) == (20, 30)
    assert non_subject_span((30, 45), 50) == (15, 30)
    assert non_subject_span((0, 30), 40) is None
    for a in range(0, 20):
        for n in range(1, 10):
            s = non_subject_span((a, a + n), 40)
            if s is not None:
                assert s[1] - s[0] == n and (s[1] <= a or s[0] >= a + n) and 0 <= s[0] and s[1] <= 40
