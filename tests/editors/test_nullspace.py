"""AlphaEdit's null space protects what it promises (issue 14 item 3): the original's absolute cut
on the count-normalised key covariance, and every record reports the nullity, ‖P K₀‖/‖K₀‖ and the
protected-key leak max|ΔW K₀| / max|W K₀| — checked here against independent computations."""

import numpy as np
import pytest
import torch

from lalm_interp.editors import EditContext, EditRequest, KeyCorpus, make
from lalm_interp.editors.keys import corpus_keys, second_moment
from lalm_interp.sites import parse
from lalm_interp.tracing import SpokenPrompt

WORDS = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785), ("is", 1.785, 1.943))
SITES = "text.layers.1:3.mlp.down"


def noise(seconds, seed):
    return (0.2 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def request(seed, new="Seattle"):
    return EditRequest(SpokenPrompt(f"ns{seed}", noise(1.95, seed), WORDS, (0, 1), "Paris", sample_rate=16000), new, "last")


@pytest.fixture(scope="module")
def ctx(tiny_deep):
    model, processor, adapter = tiny_deep
    return EditContext(model, processor, adapter, corpus=KeyCorpus("noise:3", [noise(2.5, 300 + i) for i in range(3)], sample_rate=16000))


def all_protected_keys(ctx, site):
    return torch.from_numpy(np.concatenate(list(corpus_keys(ctx, parse(site).with_port("in"))))).double()


def test_paper_null_space_is_the_absolute_cut_of_the_key_covariance(ctx):
    ed = make("alphaedit", SITES, steps=2)  # the paper preset: absolute 2e-2, L2 = 10
    site = parse("text.layers.1.mlp.down")
    P, lam = ed.projector(ctx, site)
    w = torch.linalg.eigvalsh(second_moment(ctx, site))
    assert round(float(torch.trace(P))) == int((w < 2e-2).sum())  # nullity = eigenvalues below 2e-2 (absolute)
    assert lam == 10.0
    rel = make("alphaedit", SITES, threshold_mode="relative", nullspace_threshold=1e-2, l2_mode="relative", l2=1.0)
    P_rel, lam_rel = rel.projector(ctx, site)
    assert round(float(torch.trace(P_rel))) == int((w < 1e-2 * w.max()).sum())  # the relative cut stays an option
    assert lam_rel == pytest.approx(float(w.sum()) / len(w))


def test_record_reports_nullity_protected_fraction_and_leak(ctx):
    ed = make("alphaedit", SITES, steps=3)
    names = ["text.layers.1.mlp.down", "text.layers.2.mlp.down"]
    keys = {s: all_protected_keys(ctx, s) for s in names}  # the unedited model's protected keys
    h = ed.apply(ctx, request(1))
    try:
        layers = h.info["layers"]
        assert [x["site"] for x in layers] == names
        for x, path in zip(layers, h.modules):
            site = x["site"]
            K0 = keys[site]  # every corpus key: the sample covers them all here
            assert x["n_protected_checked"] == K0.shape[0]
            P, _ = ed.projector(ctx, parse(site))
            assert x["nullity"] == round(float(torch.trace(P))) and x["dim"] == P.shape[0]
            # ‖P K0‖/‖K0‖ over the protected keys, computed directly
            assert x["protected_in_nullspace"] == pytest.approx(float((K0 @ P).norm() / K0.norm()), rel=1e-6)
            W0 = h.original(path).double()
            dW = ctx.adapter.module(ctx.model, parse(site)).weight.detach().double() - W0
            leak = float((K0 @ dW.T).abs().max() / (K0 @ W0.T).abs().max())
            assert x["leak"] == pytest.approx(leak, rel=1e-5)
            assert x["leak_total"] == pytest.approx(leak, rel=1e-5)  # first edit: the total is this edit
        assert h.info["leak"] == max(x["leak"] for x in layers)
    finally:
        h.revert()


def test_leak_is_bounded_by_the_key_energy_left_in_the_null_space(ctx):
    """ΔW = X P, so |ΔW k₀| ≤ ‖X‖‖P k₀‖: with an absolute cut keeping almost nothing of K₀, the
    protected outputs barely move; with a loose (relative 0.5) cut they move much more."""
    site = parse("text.layers.1.mlp.down")
    w = torch.linalg.eigvalsh(second_moment(ctx, site))
    ws = w.sort().values
    tight = float(ws[7] + ws[8]) / 2  # a null space of 8 directions holding ~no protected energy
    out = {}
    for name, kw in {"tight": dict(nullspace_threshold=tight), "loose": dict(threshold_mode="relative",
                                                                             nullspace_threshold=0.5)}.items():
        h = make("alphaedit", "text.layers.1.mlp.down", steps=3, l2=1e-3, **kw).apply(ctx, request(2))
        out[name] = h.info["layers"][0]
        h.revert()
    assert out["tight"]["nullity"] == 8 and out["tight"]["protected_in_nullspace"] < 0.05
    assert out["loose"]["protected_in_nullspace"] > 0.3
    assert out["tight"]["leak"] < 0.05 < out["loose"]["leak"]


def test_leak_total_accumulates_over_sequential_edits_and_reset_forgets(ctx):
    ed = make("alphaedit", "text.layers.2.mlp.down", steps=2, threshold_mode="relative", nullspace_threshold=0.5)
    site = parse("text.layers.2.mlp.down")
    h1 = ed.apply(ctx, request(3))
    h2 = ed.apply(ctx, request(4, new="guitar"))
    try:
        K0 = all_protected_keys(ctx, "text.layers.2.mlp.down")
        W0 = h1.original(h1.modules[0]).double()
        dW = ctx.adapter.module(ctx.model, site).weight.detach().double() - W0
        total = float((K0 @ dW.T).abs().max() / (K0 @ W0.T).abs().max())
        assert h2.info["layers"][0]["leak_total"] == pytest.approx(total, rel=1e-5)
        assert h2.info["layers"][0]["leak_total"] != pytest.approx(h2.info["layers"][0]["leak"])
    finally:
        h2.revert()
        h1.revert()
    ed.reset()
    assert ed.w_first == {} and ed.kp == {}


def test_leak_sample_zero_skips_the_measurement(ctx):
    h = make("alphaedit", "text.layers.2.mlp.down", steps=1, leak_sample=0).apply(ctx, request(5))
    h.revert()
    assert "leak" not in h.info["layers"][0] and h.info["leak"] is None
    assert "nullity" in h.info["layers"][0] and "protected_in_nullspace" in h.info["layers"][0]
