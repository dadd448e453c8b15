"""Loaders: shipped subsets, ROME and KnowEdit CounterFact, Known-1000."""

import collections
import json

import pytest

from lalm_interp.bench import BenchmarkError, load_counterfact, load_facts, load_known1000
from lalm_interp.bench.datasets import Fact, shipped_path, template_relation_id

ROME_RECORD = {  # shape of ROME's counterfact.json (values written for this test)
    "case_id": 7, "pararel_idx": 1,
    "requested_rewrite": {"prompt": "{}'s capital is", "relation_id": "P36",
                          "subject": "Metropolitan France",
                          "target_new": {"str": "Rome", "id": "Q220"},
                          "target_true": {"str": "Paris", "id": "Q90"}},
    "paraphrase_prompts": ["Quite so. Metropolitan France's capital city is",
                           "Metropolitan France has its capital in"],
    "neighborhood_prompts": ["The capital of the French Republic is", "France's capital is"],
    "attribute_prompts": ["Italy's capital is"], "generation_prompts": ["x"],
}


def test_shipped_subsets_are_useful_for_an_organism():
    cf = load_facts("counterfact")
    assert 250 <= len(cf) <= 400
    per_subject = collections.Counter(f.subject for f in cf)
    assert 60 <= len(per_subject) <= 100 and min(per_subject.values()) >= 3
    assert len({f.fact_id for f in cf}) == len(cf)
    for f in cf:
        assert f.subject in f.prompt and "{}" in f.relation_template
        assert f.target_new and f.target_true and f.paraphrases and f.neighbourhood
    known = load_facts("known1000")
    assert len(known) >= 200 and all(f.relation_id.startswith("P") for f in known)
    assert all(f.target_new is None for f in known)
    for name in ("counterfact", "known1000"):
        assert shipped_path(name).stat().st_size < 1_000_000


def test_rome_format(tmp_path):
    p = tmp_path / "cf.json"
    p.write_text(json.dumps([ROME_RECORD]))
    (f,) = load_counterfact(p)
    assert f == Fact(case_id=7, subject="Metropolitan France",
                     prompt="Metropolitan France's capital is", relation_template="{}'s capital is",
                     relation_id="P36", target_true="Paris", target_new="Rome",
                     paraphrases=tuple(ROME_RECORD["paraphrase_prompts"]),
                     neighbourhood=(("The capital of the French Republic is", "Paris"),
                                    ("France's capital is", "Paris")), source="counterfact")
    assert Fact.from_json(json.loads(json.dumps(f.to_json()))) == f


def test_knowedit_format_derives_relation_ids(tmp_path):
    recs = [{"case_id": i, "prompt": f"The mother tongue of {s} is", "subject": s,
             "target_new": "English", "ground_truth": "French",
             "rephrase_prompt": f"{s} speaks", "locality_prompt": "Michel Rocard is a native "
             "speaker of", "locality_ground_truth": "French"} for i, s in enumerate(["A B", "C"])]
    p = tmp_path / "ke.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs))
    a, b = load_counterfact(p)
    assert a.relation_template == "The mother tongue of {} is"
    assert a.relation_id == b.relation_id == template_relation_id("The mother tongue of {} is")
    assert a.neighbourhood == (("Michel Rocard is a native speaker of", "French"),)
    assert a.paraphrases == ("A B speaks",) and a.target_true == "French"


def test_known1000_prompt_is_kept_verbatim():
    f = load_known1000()[0]
    assert f.prompt == "Vinson Massif is located in the continent of"
    assert f.relation_template == "{} is located in the continent of" and f.relation_id == "P30"


def test_loader_errors(tmp_path):
    with pytest.raises(BenchmarkError, match="Unknown dataset source"):
        load_facts("wikidata")
    with pytest.raises(BenchmarkError, match="Cannot read dataset file"):
        load_facts("counterfact", tmp_path / "nope.json")
    lfs = tmp_path / "lfs.json"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    with pytest.raises(BenchmarkError, match="neither JSON nor JSONL"):
        load_counterfact(lfs)
    wrong = tmp_path / "w.json"
    wrong.write_text(json.dumps([{"case_id": 1, "prompt": "x"}]))
    with pytest.raises(BenchmarkError, match="record 0 lacks"):
        load_counterfact(wrong)
