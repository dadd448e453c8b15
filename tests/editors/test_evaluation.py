"""ES/PS/NS runs on the tiny random model (which knows no facts: these check the protocol — scores
before/after kept per case, reset vs accumulate, weights restored — not editing quality), and the
``edit run`` / ``eval table`` commands on a real espeak-ng benchmark."""

import json

import numpy as np
import pytest
import torch

from lalm_interp.editors import EditContext, EditRequest, KeyCorpus, make
from lalm_interp.evaluation import EditCase, Probe, run, summarise
from lalm_interp.tracing import SpokenPrompt

WORDS = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785), ("is", 1.785, 1.943))


def noise(seconds, seed):
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def case(seed, new):
    req = EditRequest(SpokenPrompt(f"c{seed}", noise(1.95, seed), WORDS, (0, 1), "Paris", sample_rate=16000), new, "last", f"case{seed}")
    return EditCase(req, (Probe(f"p{seed}", "Paris", noise(1.8, seed + 50), sample_rate=16000), Probe(f"long{seed}", "Paris", noise(5.0, 1), sample_rate=16000)),
                    (Probe(f"n{seed}", "Seattle" if new != "Seattle" else "guitar", noise(1.7, seed + 90), sample_rate=16000),))


@pytest.fixture(scope="module")
def ctx(tiny_deep):
    model, processor, adapter = tiny_deep
    return EditContext(model, processor, adapter, corpus=KeyCorpus("noise:3", [noise(2.5, 200 + i) for i in range(3)], sample_rate=16000))


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method,site,acc", [("rome", "text.layers.3.mlp.down", None),
                                             ("alphaedit", "text.layers.2:4.mlp.down", None),
                                             ("rome", "audio.layers.2.mlp.down", True)])
def test_run_keeps_per_case_records_and_restores_the_model(ctx, method, site, acc):
    snap = state(ctx.model)
    cases = [case(1, "Seattle"), case(2, "guitar")]
    ed = make(method, site, preset="organism")  # a protocol test: settings that move the tiny model's logits a lot
    res = run(ed, ctx, cases, accumulate=acc)
    assert all(torch.equal(v, snap[k]) for k, v in ctx.model.state_dict().items())
    assert res.accumulate == (ed.accumulates if acc is None else acc)
    assert len(res.records) == 2 and len(res.edits) == 2
    for rec in res.records:
        b, a = rec["before"], rec["after"]
        assert b["edit"]["p_new"] != a["edit"]["p_new"]  # probabilities before and after are both kept
        if not res.accumulate:  # scored right after its own edit (accumulated: after all edits)
            assert a["edit"]["logp_new"] > b["edit"]["logp_new"]
        assert a["paraphrase"][1]["skipped"]  # 5 s of audio does not fit the 4 s window: skipped, not truncated
    assert res.baseline == summarise(res.records, "before")
    assert {k: v for k, v in res.summary.items() if k in summarise(res.records)} == summarise(res.records)
    # what was measured: one of each case's two paraphrases is too long for the window
    assert (res.summary["n_paraphrase"], res.summary["n_paraphrase_skipped"]) == (2, 2)
    assert (res.summary["n_neighbourhood"], res.summary["n_neighbourhood_skipped"]) == (2, 0)
    rel = sorted(c["delta_rel"] for e in res.edits for c in e["changes"])
    assert res.summary["dW_rel_median"] == pytest.approx(float(np.median(rel)))
    assert all(isinstance(r["before"]["edit"]["reached"], bool) for r in res.records)
    out = res.to_json()
    assert out["mod"] == ("Text" if site.startswith("text") else "Audio")
    json.dumps(out)  # serialisable


def test_accumulated_scores_differ_from_reset_scores(ctx):
    """Sequential (accumulated) editing scores case 1 with case 2's edit also applied."""
    cases = [case(3, "Seattle"), case(4, "Seattle")]
    ed = make("rome", "text.layers.3.mlp.down", cov="identity")
    a = run(ed, ctx, cases, accumulate=False).records[0]["after"]["edit"]["logp_new"]
    b = run(ed, ctx, cases, accumulate=True).records[0]["after"]["edit"]["logp_new"]
    assert a != b


def test_failed_case_is_recorded_and_skipped(ctx):
    bad = EditCase(EditRequest(SpokenPrompt("b", noise(1.95, 5), WORDS, (0, 1), "Paris", sample_rate=16000), "Paris", "last", "bad"))
    res = run(make("rome", "text.layers.3.mlp.down"), ctx, [bad, case(6, "guitar")])
    assert "equals target_true" in res.records[0]["error"]
    assert res.summary["n_cases"] == 1 and res.meta["n_failed"] == 1


def test_cli_edit_run_and_eval_table(tiny_deep, tmp_path, capsys):
    pytest.importorskip("espeakng_loader")
    from lalm_interp.bench import build, load_facts
    from lalm_interp.apps.cli import main

    model, processor, _ = tiny_deep
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    build(load_facts("counterfact", limit=2), tmp_path / "bench", renditions=1, max_paraphrases=1,
          max_neighbours=1, workers=1, progress=False)
    rc = main(["edit", "run", "--model", str(tmp_path / "model"), "--bench", str(tmp_path / "bench"), "--method", "rome",
               "--site", "text.layers.2", "--word", "last", "--hparam", "cov=\"identity\"", "--hparam", "steps=3",
               "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"), "--quiet", "--threads", "1"])
    assert rc == 0
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["method"] == "rome" and res["hparams"]["steps"] == 3 and res["hparams"]["cov"] == "identity"
    assert {"reached", "n_paraphrase", "n_neighbourhood", "dW_rel_median"} <= set(res["summary"])
    assert len(res["cases"]) == 2 and all("before" in c and "after" in c for c in res["cases"])
    capsys.readouterr()
    assert main(["eval", "table", "--runs", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| Mod. | Method | Score | ES | PS | NS | reached | n cases | n para | n neigh |")
    assert lines[2].startswith("| – | Unedited |") and lines[3].startswith("| Text | ROME |")
    assert main(["edit", "run", "--model", str(tmp_path / "model"), "--bench", str(tmp_path / "bench"),
                 "--method", "rome", "--site", "text.layers.2.attn", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    # two CounterFact facts whose new objects are not each other's true objects: nothing is left
    assert main(["edit", "run", "--model", str(tmp_path / "model"), "--bench", str(tmp_path / "bench"),
                 "--method", "rome", "--site", "text.layers.2", "--targets", "produced",
                 "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "no edit cases left" in capsys.readouterr().err
    assert not (tmp_path / "y" / "result.json").exists()


def test_with_produced_targets_keeps_targets_that_are_answers_of_other_cases():
    from lalm_interp.evaluation import with_produced_targets

    def c(seed, true, new):
        req = EditRequest(SpokenPrompt(f"c{seed}", noise(0.5, seed), WORDS[:1], (0, 0), true, sample_rate=16000), new, "last", f"case{seed}")
        return EditCase(req)

    cases = [c(0, "Paris", "Rome"), c(1, "Rome", "Beirut"), c(2, "Oslo", "Paris"), c(3, "Lima", "Lima2")]
    assert [x.case_id for x in with_produced_targets(cases)] == ["case0", "case2"]  # Rome, Paris are answers
    assert [x.case_id for x in with_produced_targets(cases, objects=["Beirut"])] == ["case1"]
    assert with_produced_targets([]) == []


def test_reached_is_target_new_top1_at_every_token(ctx):
    """``reached`` agrees with transformers' own greedy decoding."""
    from lalm_interp.evaluation import score_case, top1_reached
    from lalm_interp.inputs import build_inputs
    from lalm_interp.scoring import object_prefix, object_token_ids

    c = case(7, "Seattle")
    p = c.request.prompt
    b = build_inputs(ctx.processor, ctx.adapter, [p.audio], instruction=[p.instruction], sample_rate=16000)
    new_ids = object_token_ids(ctx.tokenizer, "Seattle", object_prefix(ctx.adapter, b))

    def greedy() -> list[int]:
        with torch.no_grad():
            gen = ctx.model.generate(**b.model_inputs, max_new_tokens=len(new_ids), do_sample=False)
        return gen[0, b.model_inputs["input_ids"].shape[1]:].tolist()

    g = greedy()
    assert top1_reached(ctx, p, g) is True  # the model's own greedy continuation, as token ids
    assert top1_reached(ctx, p, g[:-1] + [(g[-1] + 1) % 1000]) is False  # one token off
    assert top1_reached(ctx, p, "Seattle") is (g == new_ids) is False
    assert score_case(ctx, c)["edit"]["reached"] is False
    long = Probe("long", "Paris", noise(5.0, 1), sample_rate=16000)
    assert top1_reached(ctx, long, "Paris") is None  # longer than the window: not scored
