"""The site-addressed primitives (read, set_, add, corrupt) inside nnsight traces of a tiny random
Qwen2-Audio, checked against plain torch forward hooks on the same modules."""

import numpy as np
import pytest
import torch

from lalm_interp.inputs import build_inputs, place
from lalm_interp.interventions.primitives import add, corrupt, in_forward_order, read, set_
from lalm_interp.specs import SpecError
from lalm_interp.wrap import wrap

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tiny):
    model, processor, adapter = tiny
    rng = np.random.default_rng(0)
    clips = [(0.3 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in (1.5, 2.0)]
    batch = build_inputs(processor, adapter, clips, sample_rate=16000)
    return model, adapter, wrap(model), place(batch.model_inputs, model)


def hooked_forward(model, adapter, site, fn, inputs, *, pre=False):
    """Reference: one plain forward with a torch hook that rewrites the (batch, time, channels)
    view of ``site``'s output (or first input) through ``fn``; returns the logits."""
    mod = adapter.module(model, site)
    s = adapter.one(site)

    def out_hook(m, args, out):
        t = out[0] if isinstance(out, tuple) else out
        t = t.clone()
        fn(adapter.to_btc(s, t))
        return (t, *out[1:]) if isinstance(out, tuple) else t

    def in_hook(m, args):
        t = args[0].clone()
        fn(adapter.to_btc(s, t))
        return (t, *args[1:])

    h = mod.register_forward_pre_hook(in_hook) if pre else mod.register_forward_hook(out_hook)
    try:
        return model(**inputs, use_cache=False).logits
    finally:
        h.remove()


def test_read_is_the_module_value_in_btc_layout(setup):
    model, adapter, w, inputs = setup
    sites = adapter.expand("audio.conv2") + adapter.expand("text.layers.*.attn") + adapter.expand("text.layers.1.mlp.down@in")
    got = {}

    def keep(s):
        return lambda x: got.__setitem__(s, x.clone())

    for s in sites:
        hooked_forward(model, adapter, str(s), keep(s), inputs, pre=s.port == "in")
    seen = {}
    with torch.no_grad(), w.trace(**inputs, use_cache=False):
        for s in in_forward_order(adapter, sites):
            seen[s] = read(w, adapter, s).clone().save()
    with torch.no_grad(), w.trace(**inputs, use_cache=False):
        seen["pos"] = read(w, adapter, "text.layers.1.attn", (2, 5), 1).clone().save()
    for s in sites:
        assert torch.equal(seen[s], got[s]), s
    assert seen[sites[0]].shape[1:] == (got[sites[0]].shape[1], adapter.width(sites[0]))  # conv2: (B, T, C)
    assert torch.equal(seen["pos"], got[adapter.one("text.layers.1.attn")][1, 2:5])


def test_no_op_trace_is_the_plain_forward(setup):
    model, adapter, w, inputs = setup
    with torch.no_grad():
        ref = model(**inputs, use_cache=False).logits
        with w.trace(**inputs, use_cache=False):
            read(w, adapter, "text.layers.0.resid")
            add(w, adapter, "text.layers.1.mlp", torch.zeros(adapter.width(adapter.one("text.layers.1.mlp"))), (1, 4))
            logits = w.output.logits.save()
    assert torch.equal(logits, ref)


@pytest.mark.parametrize("site", ["audio.conv2", "audio.layers.0.attn", "text.layers.0.mlp"])
def test_set_and_add_at_rows_and_positions_equal_hooks(setup, site):
    model, adapter, w, inputs = setup
    C = adapter.width(adapter.one(site))
    delta = torch.linspace(-1, 1, C)
    pos = torch.tensor([1, 3, 4])

    def ref_fn(x):
        x[1, 2:6] = 0.5
        x[0, pos] = x[0, pos] + delta

    ref = hooked_forward(model, adapter, site, ref_fn, inputs)
    with torch.no_grad(), w.trace(**inputs, use_cache=False):
        set_(w, adapter, site, 0.5, (2, 6), rows=1)
        add(w, adapter, site, delta, pos, rows=0)
        logits = w.output.logits.save()
    assert torch.equal(logits, ref)
    assert not torch.equal(logits, model(**inputs, use_cache=False).logits)


def test_corrupt_adds_scaled_noise_with_the_clean_rows_sigma(setup):
    model, adapter, w, inputs = setup
    site = adapter.one("audio.conv2")
    z = torch.randn(10, adapter.width(site), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), w.trace(**inputs, use_cache=False):
        clean = read(w, adapter, site).clone().save()
        corrupt(w, adapter, site, (5, 15), z, rows=[1], scale=3.0, sigma="span", clean_row=0)
        after = read(w, adapter, site).clone().save()
    sigma = clean[0, 5:15].float().std()
    assert torch.equal(after[1, 5:15], clean[1, 5:15] + (3.0 * sigma) * z)
    assert torch.equal(after[0], clean[0])  # other rows ...
    assert torch.equal(after[1, :5], clean[1, :5]) and torch.equal(after[1, 15:], clean[1, 15:])  # ... positions
    with pytest.raises(SpecError, match="sigma"), torch.no_grad(), w.trace(**inputs, use_cache=False):
        corrupt(w, adapter, site, (5, 15), z, sigma="std")


def test_gradients_flow_through_add_exactly_as_through_a_hook(setup):
    model, adapter, w, inputs = setup
    site = adapter.one("text.layers.0.mlp")
    params = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        grads = []
        for use_trace in (False, True):
            delta = torch.full((adapter.width(site),), 0.1, requires_grad=True)
            if use_trace:
                with w.trace(**inputs, use_cache=False):
                    add(w, adapter, site, delta, (3, 7))
                    logits = w.output.logits.save()
            else:
                def fn(x):
                    x[:, 3:7] = x[:, 3:7] + delta

                logits = hooked_forward(model, adapter, str(site), fn, inputs)
            torch.log_softmax(logits[:, -1], -1)[:, 5].sum().backward()
            grads.append(delta.grad.clone())
    finally:
        for p, f in zip(model.parameters(), params):
            p.requires_grad_(f)
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[0], grads[1])


def test_in_forward_order_sorts_and_deduplicates(tiny):
    _, _, adapter = tiny
    order = in_forward_order(adapter, ["text.layers.1.mlp", "audio.conv2", "text.layers.0.resid", "audio.conv2"])
    assert [str(s) for s in order] == ["audio.conv2", "text.layers.0.resid", "text.layers.1.mlp"]
