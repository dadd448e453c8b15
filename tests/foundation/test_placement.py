"""Inputs follow the model: a model cast to bf16 (or moved to a GPU) needs no other change.

The CPU half of the contract is tested here (dtype); ``benchmarks/bench_gpu.py`` checks the device
half on a GPU machine (tracing, scoring and every editor on CUDA)."""

import copy

import numpy as np
import pytest
import torch

from lalm_interp.editors import EditContext, EditRequest, KeyCorpus, make
from lalm_interp.inputs import build_inputs, model_placement, place
from lalm_interp.scoring import score_objects
from lalm_interp.specs import Corrupt, Experiment, Restore
from lalm_interp.tracing import SpokenPrompt, trace_example

WORDS = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785), ("is", 1.785, 1.943))


def noise(seconds, seed):
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


@pytest.fixture(scope="module")
def bf16(tiny_deep):
    model, processor, adapter = tiny_deep
    return copy.deepcopy(model).to(torch.bfloat16), processor, adapter


def test_place_casts_features_and_keeps_integer_inputs(tiny_deep, bf16):
    model, processor, adapter = tiny_deep
    batch = build_inputs(processor, adapter, [noise(1.0, 0)], sample_rate=16000)
    moved = place(batch.model_inputs, bf16[0])
    assert moved["input_features"].dtype == torch.bfloat16
    assert moved["input_ids"].dtype == torch.long and torch.equal(moved["input_ids"], batch.input_ids)
    assert moved["attention_mask"].dtype == batch.model_inputs["attention_mask"].dtype
    same = place(batch.model_inputs, model)  # already where the fp32 model wants them: the same tensors
    assert all(same[k] is v for k, v in batch.model_inputs.items())
    assert model_placement(bf16[0]) == (torch.device("cpu"), torch.bfloat16)
    assert place(batch, bf16[0]) is batch and batch.input_features.dtype == torch.bfloat16


def test_scoring_and_tracing_run_on_a_bf16_model(tiny_deep, bf16):
    ex = SpokenPrompt("ex0", noise(1.95, 0), WORDS, (0, 1), "Paris", sample_rate=16000)
    exp = Experiment("t", corrupt=Corrupt(scale=30.0),
                     restores=(Restore("audio.layers.*.resid", window=1, positions=("subject",)),
                               Restore("text.layers.*.mlp", window=3, positions=("last_token",))))
    out32 = trace_example(*tiny_deep, ex, exp)
    out16 = trace_example(*bf16, ex, exp)
    for v in ("p_clean", "p_corrupt", "audio.resid/ie", "text.mlp/ie"):
        a, b = np.asarray(out32[v]), np.asarray(out16[v])
        assert np.isfinite(b).all()
        np.testing.assert_allclose(b, a, atol=0.05, rtol=0.1)  # bf16 keeps ~3 significant digits
    batch = build_inputs(bf16[1], bf16[2], [ex.audio], sample_rate=ex.sample_rate)
    s = score_objects(bf16[0], bf16[2], batch, ["Paris"])
    assert s.total.device.type == "cpu" and torch.isfinite(s.total).all()


@pytest.mark.parametrize("method,site", [("rome", "text.layers.2.mlp.down"), ("alphaedit", "audio.layers.1:3")])
def test_editors_edit_and_revert_a_bf16_model(bf16, tmp_path, method, site):
    model, processor, adapter = bf16
    ctx = EditContext(model, processor, adapter, corpus=KeyCorpus("noise:3", [noise(2.5, 100 + i) for i in range(3)], sample_rate=16000))
    req = EditRequest(SpokenPrompt("ex0", noise(1.95, 0), WORDS, (0, 1), "Paris", sample_rate=16000), "Seattle", "first")
    snap = {k: v.clone() for k, v in model.state_dict().items()}

    def p_new():
        b = build_inputs(processor, adapter, [req.prompt.audio], sample_rate=req.prompt.sample_rate)
        return float(score_objects(model, adapter, b, [req.target_new]).total[0].exp())

    before = p_new()
    handle = make(method, site, preset="organism").apply(ctx, req)  # settings that move the tiny model a lot
    assert all(c["delta_fro"] > 0 for c in handle.changes)
    assert p_new() > before
    handle.revert()
    assert all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())
