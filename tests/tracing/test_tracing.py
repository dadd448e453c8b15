"""Causal tracing compiler on a tiny random Qwen2-Audio with 6 audio and 6 text layers."""

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, strategies as st

from lalm_interp.specs import Corrupt, Experiment, Patch, Read, Restore, SpecError, window_layers
from lalm_interp.tracing import SpokenPrompt, aggregate, families, trace_example
from lalm_interp.tracing.causal import Prepared
from lalm_interp.interventions import Row

WORDS = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785), ("is", 1.785, 1.943))


def prompt(seed=0, target="Paris"):
    rng = np.random.default_rng(seed)
    audio = (0.3 * rng.standard_normal(int(1.95 * 16000))).astype(np.float32)
    return SpokenPrompt(f"ex{seed}", audio, WORDS, (0, 1), target, sample_rate=16000)


@pytest.fixture(scope="module")
def prep(tiny_deep):
    model, processor, a = tiny_deep
    exp = Experiment("t", corrupt=Corrupt(scale=30.0))
    return Prepared(model, processor, a, prompt(), exp)


@pytest.fixture(scope="module")
def prep_batched(tiny_deep):
    """The batched compiler alone (every row a full forward): ``Experiment.savings=()``."""
    model, processor, a = tiny_deep
    exp = Experiment("t", corrupt=Corrupt(scale=30.0), savings=())
    return Prepared(model, processor, a, prompt(), exp)


def _p(lp):
    return lp[:, 0].exp()


def test_noop_and_references(prep, tiny_deep):
    model, _, _ = tiny_deep
    base = prep.compiled.base()
    with torch.no_grad():
        logits = model(**prep.inputs, use_cache=False).logits
    ref = torch.log_softmax(logits[0, prep.L - 1], -1)[prep.token_ids[0]]
    assert base[0, 0].item() == ref.item()  # the clean row of a compiled trace IS the HF forward
    assert base[1, 0].item() != base[0, 0].item()  # corruption changes the prediction


def test_restoring_nothing_reproduces_corrupt_exactly(prep):
    base = prep.compiled.base()
    lp = prep.compiled.run([Row({"x": 0}), Row({"x": 1})], reuse_encoder=False)
    assert torch.equal(lp[:, 0], base[1, 0].expand(2))


@pytest.mark.parametrize("stream", ["audio", "text"])
def test_restoring_everything_reproduces_clean_exactly(prep, stream):
    base = prep.compiled.base()
    rows = prep.rows(Restore(f"{stream}.layers.*.resid", window=6, positions="all"))
    lp = prep.compiled.run(rows)
    assert torch.equal(lp[:, 0], base[0, 0].expand(len(rows)))


def test_batched_sweep_equals_naive_loop(prep):
    rows = prep.rows(Restore("audio.layers.*.mlp", window=3, positions=("subject", "last_word")))
    rows += prep.rows(Restore("text.layers.*.attn", window=3, positions=("last_subject_word", "last_token")))
    batched = prep.compiled.run(rows, reuse_encoder=False)
    naive = prep.compiled.run_naive(rows)
    torch.testing.assert_close(_p(batched), _p(naive), atol=1e-6, rtol=0)
    assert _p(batched).std() > 0  # restorations differ from each other


def test_encoder_reuse_equals_full_recomputation(prep_batched):
    prep = prep_batched
    rows = prep.rows(Restore("text.layers.*.resid", window=1, positions="each"))[::7]
    prep.compiled.forwards = 0
    reused = prep.compiled.run(rows, reuse_encoder=True)
    full = prep.compiled.run(rows, reuse_encoder=False)
    assert prep.compiled.segmented_rows == 0
    torch.testing.assert_close(reused, full, atol=1e-6, rtol=1e-6)


def test_chunking_by_memory_budget_gives_same_result(prep_batched):
    prep = prep_batched
    rows = prep.rows(Restore("text.layers.*.mlp", window=3, positions=("subject", "last_word", "last_token")))
    rows += prep.rows(Restore("audio.layers.*.attn", window=2, positions=("subject",)))
    big = prep.compiled.run(rows)
    prep.compiled.memory_mb = 1  # forces the minimum chunk (1 restoration per forward)
    prep.compiled.forwards = 0
    small = prep.compiled.run(rows)
    prep.compiled.memory_mb = 2048
    assert prep.compiled.forwards == len(rows)
    torch.testing.assert_close(big, small, atol=1e-6, rtol=1e-6)


def test_noise_only_on_subject_frames(prep):
    site = prep.adapter.one("audio.conv2")
    prep.compiled.base(reads=[site])
    x = prep.compiled.read_values[site]  # (2, T, C): clean, corrupt
    a, b = prep.corruption.start, prep.corruption.stop
    assert (a, b) == prep.pm.span("subject", "encoder") == (0, 64)
    assert torch.equal(x[0, :a], x[1, :a]) and torch.equal(x[0, b:], x[1, b:])
    diff = (x[1, a:b] - x[0, a:b])
    sigma = x[0, a:b].std()
    assert not torch.equal(x[0, a:b], x[1, a:b])
    assert diff.std().item() == pytest.approx(30.0 * sigma.item(), rel=0.05)


def test_noise_is_reproducible_and_seeded(tiny_deep):
    model, processor, a = tiny_deep
    ex = prompt()
    p1 = Prepared(model, processor, a, ex, Experiment("t", corrupt=Corrupt(seed=1))).compiled.base()
    p2 = Prepared(model, processor, a, ex, Experiment("t", corrupt=Corrupt(seed=1))).compiled.base()
    p3 = Prepared(model, processor, a, ex, Experiment("t", corrupt=Corrupt(seed=2))).compiled.base()
    assert torch.equal(p1, p2) and not torch.equal(p1[1], p3[1])


def test_zero_and_replace_noise(tiny_deep):
    model, processor, a = tiny_deep
    ex = prompt()
    site = a.one("audio.conv2")
    pz = Prepared(model, processor, a, ex, Experiment("t", corrupt=Corrupt(noise="zero")))
    pz.compiled.base(reads=[site])
    x = pz.compiled.read_values[site]
    assert torch.count_nonzero(x[1, 0:64]) == 0 and torch.equal(x[0, 64:], x[1, 64:])
    other = prompt(seed=9).audio
    pr = Prepared(model, processor, a, ex, Experiment("t", corrupt=Corrupt(noise="replace")), replace_audio=other,
                  replace_sample_rate=16000)
    pr.compiled.base(reads=[site])
    y = pr.compiled.read_values[site]
    assert torch.equal(y[1, 0:64], pr.corruption.replace_values)
    with pytest.raises(SpecError, match="replace_audio"):
        Prepared(model, processor, a, ex, Experiment("t", corrupt=Corrupt(noise="replace")))


def test_trace_example_result_is_labelled(tiny_deep):
    model, processor, a = tiny_deep
    exp = Experiment(
        "fig2",
        restores=(
            Restore("audio.layers.*.resid", window=3),
            Restore("text.layers.*.mlp", window=3, positions=("first_subject_word", "last_word", "last_token")),
            Restore("audio.layers.*.attn", window=1, positions="each", name="audio.attn.each"),
        ),
        patches=(Patch("text.layers.2.resid", positions=("last_token",)),),
    )
    ds = trace_example(model, processor, a, prompt(), exp)
    assert isinstance(ds, xr.DataTree)
    assert families(ds) == ["audio.resid", "text.mlp", "audio.attn.each"]
    assert set(ds.ds.data_vars) == {"p:patched", "p_clean", "p_corrupt"}
    assert ds["text.mlp"].ie.dims == ("layer", "position")
    assert list(ds["text.mlp"].label.values) == ["first_subject_word", "last_word", "last_token"]
    assert list(ds["text.mlp"].position.values) == [0, 1, 2] and list(ds["text.mlp"].layer.values) == list(range(6))
    assert ds["text.mlp"].attrs == {"site": "text.layers.*.mlp", "positions": "first_subject_word,last_word,last_token"}
    each = ds["audio.attn.each"].ie
    assert each.shape == (6, 98)  # 1.95 s → 195 mel → 98 encoder frames
    assert list(each.position.values) == list(range(98)) and each.label.values[97] == "97"
    assert each.sel(layer=4).dims == ("position",)
    np.testing.assert_array_equal(each.sel(layer=4).values, each.values[4])
    assert each.word.values[0] == "Metropolitan"
    # encoder frame j is centred at 0.02 j s (mel frames are centred; rates.py, docs/gotchas/frame-rates.md)
    assert float(each.time_s.values[0]) == pytest.approx(0.0)
    assert float(each.time_s.values[1]) == pytest.approx(0.02)
    assert each.is_subject.values[:64].all() and not each.is_subject.values[64:].any()
    assert Experiment.from_json(ds.attrs["experiment"]) == exp
    agg = aggregate([ds, ds], exp)
    assert agg["ie"].dims == ("example", "family", "span", "layer")
    assert list(agg["stream"].values) == ["audio", "text", "audio"]
    np.testing.assert_allclose(agg["aie"].sel(family="text.mlp", span="last_token").values,
                               ds["text.mlp"].ie.sel(label="last_token").values)


def test_reads_record_values(tiny_deep):
    model, processor, a = tiny_deep
    prep = Prepared(model, processor, a, prompt(), Experiment("t"))
    sites = a.expand("text.layers.1:3.mlp.down@in")
    prep.compiled.base(reads=sites)
    for s in sites:
        v = prep.compiled.read_values[s]
        assert v.shape == (2, prep.inputs["input_ids"].shape[1], a.width(s))


@pytest.mark.parametrize(
    "exp, needle",
    [
        (Experiment("e", restores=(Restore("text.layers.*.ffn"),)), "matches nothing"),
        (Experiment("e", corrupt=Corrupt(at="audio.layers.3.resid"), restores=(Restore("audio.layers.*.resid", window=1),)),
         "runs before the corruption"),
        (Experiment("e", restores=(Restore("audio.layers.*.mlp", window=3, positions=("last_token",)),)), "text position"),
        (Experiment("e", corrupt=Corrupt(at="audio.layers.*.resid")), "exactly one"),
    ],
)
def test_bad_specs_fail_before_compute(tiny_deep, exp, needle):
    model, processor, a = tiny_deep
    calls = []
    h = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(SpecError, match=needle):
            trace_example(model, processor, a, prompt(), exp)
    finally:
        h.remove()
    assert calls == []


def test_window_longer_than_the_stack_is_clipped_not_refused(tiny_deep):
    """ROME's rule (Restore's docstring): the window is centred on each layer and clipped at both
    ends of the stack; a window longer than the stack is a note (WindowClipped), not an error."""
    from lalm_interp.specs import WindowClipped

    model, processor, a = tiny_deep
    exp = Experiment("e", restores=(Restore("text.layers.*.mlp", window=7, positions=("last_token",)),))
    with pytest.warns(WindowClipped, match="window=7 is longer than the 6 text layers"):
        ds = trace_example(model, processor, a, prompt(), exp)
    rows = Prepared(model, processor, a, prompt(), exp).rows(exp.restores[0])
    assert [[e.site.layer for e in r.edits] for r in rows] == [window_layers(l, 7, 6) for l in range(6)]
    assert [len(r.edits) for r in rows] == [4, 5, 6, 6, 5, 4]
    assert np.isfinite(ds["text.mlp"].ie.values).all()
    assert exp.windows({"audio": 6, "text": 6}) == {"text.mlp": {"requested": 7, "used": 6, "n_layers": 6}}


def test_span_in_padding_is_a_clear_error(tiny_deep):
    model, processor, a = tiny_deep
    ex = prompt()
    bad = SpokenPrompt("late", ex.audio[:8000], WORDS, (2, 3), "Paris", sample_rate=16000)  # 0.5 s clip, words beyond it
    with pytest.raises(Exception, match="after the clip"):
        trace_example(model, processor, a, bad, Experiment("e"))


def test_text_side_corruption_is_not_lost_by_encoder_reuse(tiny_deep):
    model, processor, a = tiny_deep
    exp = Experiment("t", corrupt=Corrupt(at="text.layers.0.resid", span="subject", scale=30.0))
    prep = Prepared(model, processor, a, prompt(), exp)
    rows = prep.rows(Restore("text.layers.2:6.mlp", window=1, positions=("last_token",)))
    base = prep.compiled.base()
    assert base[0, 0] != base[1, 0]
    reused = prep.compiled.run(rows, reuse_encoder=True)
    full = prep.compiled.run(rows, reuse_encoder=False)
    torch.testing.assert_close(reused, full, atol=1e-6, rtol=1e-6)


def test_aggregate_summarises_each_mode_over_the_subject(tiny_deep):
    model, processor, a = tiny_deep
    exp = Experiment("e", restores=(Restore("text.layers.4:6.resid", window=1, positions="each"),))
    ds = trace_example(model, processor, a, prompt(), exp)
    agg = aggregate([ds], exp)
    subj = ds["text.resid"].is_subject.values
    assert subj.any() and not subj.all()
    expect = ds["text.resid"].ie.values[:, subj].mean(axis=1)
    np.testing.assert_allclose(agg["aie"].sel(family="text.resid", span="subject_mean").values[4:6], expect)


def test_spec_round_trip_and_errors():
    exp = Experiment("x", corrupt=Corrupt(noise="zero", seed=3),
                     restores=(Restore("text.layers.*.attn", positions=("subject", (0, 1))),), reads=(Read("proj"),))
    assert Experiment.from_json(exp.to_json()) == exp
    with pytest.raises(SpecError, match="noise"):
        Corrupt(noise="pink")
    with pytest.raises(SpecError, match="per-layer"):
        Restore("audio.conv2")
    with pytest.raises(SpecError, match="unknown span 'subjekt'"):
        Restore("text.layers.*.mlp", positions=("subjekt",))
    with pytest.raises(SpecError, match="Patch.positions"):
        Patch("text.layers.1.mlp", positions="each")
    with pytest.raises(SpecError, match="Read.runs"):
        Read("proj", runs=("restored",))
    with pytest.raises(SpecError, match="distinct"):
        Experiment("x", restores=(Restore("text.layers.*.mlp"), Restore("text.layers.*.mlp")))


@given(st.integers(0, 63), st.integers(1, 70), st.integers(1, 64))
def test_window_clipping(centre, window, n):
    if centre >= n:
        centre = n - 1
    ls = window_layers(centre, window, n)
    assert ls == sorted(ls) and len(set(ls)) == len(ls)
    assert all(0 <= l < n for l in ls)
    assert len(ls) <= window
    if window <= n:
        assert centre in ls or window == 0
    lo = centre - window // 2
    assert ls == [l for l in range(lo, lo + window) if 0 <= l < n]
