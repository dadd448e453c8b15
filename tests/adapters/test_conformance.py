"""One conformance test over every registered adapter: sites resolve with the declared widths and
time lengths, the no-op trace is the HF forward, rate chains round-trip, a Corrupt+Restore spec runs,
and a single-layer edit applies and reverts bitwise."""

from __future__ import annotations

import torch

from lalm_interp import adapters
from lalm_interp.inputs import build_inputs
from lalm_interp.spans import SEQ, position_map
from lalm_interp.specs import Corrupt, Experiment, Restore
from lalm_interp.tracing.causal import Prepared, SpokenPrompt
from lalm_interp.interventions.primitives import read
from lalm_interp.wrap import wrap

from adapter_helpers import ADAPTER_NAMES, SUBJECT, WORDS, audio


def test_every_adapter_is_registered_and_tested():
    assert set(adapters.available()) >= set(ADAPTER_NAMES)


def _inputs(model, proc, a, n=2):
    batch = build_inputs(proc, a, [audio(k) for k in range(n)], sample_rate=16000)
    return batch


def test_every_site_resolves(any_model):
    model, _, a = any_model
    sites = a.all_sites()
    assert sites == sorted(sites, key=a.forward_rank)
    for s in sites:
        assert isinstance(a.module(model, s), torch.nn.Module), s
        assert a.width(s) > 0
    for stream in a.streams:
        assert a.expand(f"{stream}.*" if stream != "proj" else "proj")


def test_site_shapes_match_declared_dims(any_model):
    model, proc, a = any_model
    batch = _inputs(model, proc, a)
    B, L = batch.input_ids.shape
    chain = a.rate_chain
    w = wrap(model)
    saved = {}
    with torch.no_grad(), w.trace(**batch.model_inputs, use_cache=False):
        for s in a.all_sites():
            saved[s] = read(w, a, s).shape.save()
    for s, shape in saved.items():
        st = a.stage(s)
        n_t = L if st == SEQ else chain.valid(st, a.window_mel)
        assert tuple(shape) == (B, n_t, a.width(s)), (str(s), tuple(shape))


def test_noop_trace_equals_hf_forward(any_model):
    model, proc, a = any_model
    batch = _inputs(model, proc, a)
    with torch.no_grad():
        ref = model(**batch.model_inputs, use_cache=False).logits
        w = wrap(model)
        with w.trace(**batch.model_inputs, use_cache=False):
            out = w.output.logits.save()
    assert torch.equal(out, ref)


def test_rate_chain_round_trips(any_model):
    model, proc, a = any_model
    chain = a.rate_chain
    for st in chain.names:
        n = chain.valid(st, a.window_mel)
        for j in (0, 1, n // 2, n - 1):
            t0, t1 = chain.frame_to_seconds(st, j)
            assert chain.seconds_to_span(st, t0, t1, a.window_mel) == (j, j + 1)
            assert chain.map_span(st, (j, j + 1), "mel") == (j * chain.cell(st), (j + 1) * chain.cell(st))
    batch = _inputs(model, proc, a, n=1)
    llm = chain.llm_stage
    n_pos = chain.valid(llm, a.window_mel if a.spec.audio_positions == "window" else batch.n_mel[0])
    assert batch.n_audio[0] == n_pos
    pm = position_map(a, batch, 0, WORDS, SUBJECT)
    s0, s1 = pm.span("subject", SEQ)
    assert (s0 - batch.audio_start[0], s1 - batch.audio_start[0]) == pm.span("subject", llm)
    assert batch.audio_start[0] <= s0 < s1 <= batch.audio_start[0] + batch.n_audio[0]


def test_corrupt_and_restore_spec_runs(any_model):
    model, proc, a = any_model
    ex = SpokenPrompt("ex0", audio(0), WORDS, SUBJECT, "Paris", sample_rate=16000)
    exp = Experiment("conf", corrupt=Corrupt(scale=30.0))
    prep = Prepared(model, proc, a, ex, exp)
    base = prep.compiled.base()
    assert base[0, 0] != base[1, 0]
    n = a.n_layers("text")
    rows = prep.rows(Restore("text.layers.*.resid", window=2 * n, positions="all"))
    rows += prep.rows(Restore("audio.layers.*.resid", window=2 * a.n_layers("audio"), positions="all"))
    lp = prep.compiled.run(rows, reuse_encoder=False)
    assert torch.equal(lp[:, 0], base[0, 0].expand(len(rows)))  # restoring everything = clean, exactly
    rows = prep.rows(Restore("text.layers.*.mlp", window=1, positions=("subject", "last_token")))
    reused = prep.compiled.run(rows, reuse_encoder=True)
    full = prep.compiled.run(rows, reuse_encoder=False)
    torch.testing.assert_close(reused, full, atol=1e-6, rtol=1e-6)


def test_single_layer_edit_applies_and_reverts_bitwise(any_model):
    model, proc, a = any_model
    batch = _inputs(model, proc, a, n=1)
    W = a.module(model, "text.layers.0.mlp.down").weight
    assert W.shape == (a.width("text.layers.0.mlp.down"), a.width("text.layers.0.mlp.down@in"))
    snap = W.detach().clone()
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(W.shape[0], generator=g), torch.randn(W.shape[1], generator=g)
    k = v / v.dot(v)
    with torch.no_grad():
        before = model(**batch.model_inputs, use_cache=False).logits
        W += torch.outer(u, v)  # rank-one: W k = W0 k + u
        torch.testing.assert_close(W @ k, snap @ k + u, atol=1e-5, rtol=1e-5)
        edited = model(**batch.model_inputs, use_cache=False).logits
        W.copy_(snap)
        after = model(**batch.model_inputs, use_cache=False).logits
    assert not torch.equal(edited, before)
    assert torch.equal(W, snap) and torch.equal(after, before)
