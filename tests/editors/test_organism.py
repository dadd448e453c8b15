"""Editing the organism (a tiny Qwen2-Audio that really knows its spoken facts): each editor makes a
known fact flip to target_new on its own prompt for most cases. Skipped until the organism ships."""

from pathlib import Path

import pytest

import lalm_interp

ORGANISM = Path(lalm_interp.__file__).parent / "assets" / "organism"
if not (ORGANISM / "config.json").is_file():
    pytest.skip(f"the organism is not shipped in this checkout ({ORGANISM}/config.json missing); "
                "train it with `lalm-interp organism train`", allow_module_level=True)

N_FACTS = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lalm_interp import load
    from lalm_interp.bench import Benchmark, build
    from lalm_interp.bench.corpus import synthesise_corpus
    from lalm_interp.bench.datasets import load_facts
    from lalm_interp.editors import EditContext, KeyCorpus
    from lalm_interp.evaluation import cases_from_benchmark
    from lalm_interp.known import first_token_scores
    from lalm_interp.organism.export import recipe_of
    from lalm_interp.organism.facts import choose_facts

    model, processor, adapter = load("organism")
    recipe = recipe_of(ORGANISM)
    facts = choose_facts(recipe)
    d = tmp_path_factory.mktemp("organism-bench")
    r0 = recipe.train_renditions[0]
    build(facts[: 3 * N_FACTS], d, renditions=[r0], max_paraphrases=1, max_neighbours=1, workers=1, progress=False)
    cases = cases_from_benchmark(Benchmark.open(d), word="last", instruction=recipe.instruction)
    known = first_token_scores(model, processor, adapter, [c.request.prompt for c in cases], target="target",
                               instruction=recipe.instruction).correct
    cases = [c for c, ok in zip(cases, known) if ok][:N_FACTS]
    assert len(cases) >= 5, "the organism should know most of its training facts"
    corpus = synthesise_corpus(tmp_path_factory.mktemp("corpus"), n=60,
                               facts=load_facts("counterfact") + load_facts("known1000"),
                               exclude=[f.fact_id for f in facts], workers=1)
    ctx = EditContext(model, processor, adapter, corpus=KeyCorpus("synth:60", corpus))
    return ctx, cases


@pytest.mark.parametrize("method,site", [
    ("rome", "audio.layers.-1.mlp.down"), ("rome", "text.layers.0.mlp.down"),
    ("crossmodal", ["audio.layers.-1", "text.layers.0"]), ("alphaedit", "text.layers.0:2.mlp.down"),
    ("crossmodal-alphaedit", ["audio.layers.0:2", "text.layers.0:2"]), ("finetune", "text.layers.0.mlp.down"),
])
def test_editor_flips_known_facts(setup, method, site):
    from lalm_interp.editors import make
    from lalm_interp.evaluation import run

    ctx, cases = setup
    res = run(make(method, site), ctx, cases, accumulate=False)
    assert res.baseline["ES"] < 50  # known facts: the true object wins before the edit
    assert res.summary["ES"] > 50, res.summary  # ... and target_new wins after it, for most cases
