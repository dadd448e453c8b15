"""The editors' reads and value changes run on the engine (editors/keys.py): the same logits and the
same gradients as the torch forward hooks they replaced, bit for bit, and no hook left behind."""

import numpy as np
import pytest
import torch

from lalm_interp.editors import EditContext, EditRequest
from lalm_interp.editors.keys import capture, logits_with_delta, prepare, span, wrapped
from lalm_interp.prompts import SpokenPrompt

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785), ("is", 1.785, 1.943))


@pytest.fixture(scope="module")
def setup(tiny_deep):
    model, processor, adapter = tiny_deep
    audio = (0.3 * np.random.default_rng(0).standard_normal(int(1.95 * 16000))).astype(np.float32)
    req = EditRequest(SpokenPrompt("ex0", audio, WORDS, (0, 1), "Paris", sample_rate=16000), "Seattle", "first")
    ctx = EditContext(model, processor, adapter)
    return ctx, prepare(ctx, req)


def hooked_logits(ctx, inputs, site, positions, delta, rank_one=None, mix=None):
    """The removed ``keys.add_delta`` hook (verbatim formula), around one plain forward."""
    adapter = ctx.adapter
    a, b = positions

    def hook(mod, args, output):
        x = output[0] if isinstance(output, tuple) else output
        btc = adapter.to_btc(site, x)
        if mix is not None:
            key = adapter.to_btc(site.with_port("in"), args[0])
            add = ((key.double() @ mix.T) @ delta.double()).to(btc.dtype)
        elif rank_one is None:
            add = torch.zeros_like(btc)
            add[:, a:b, :] = delta.to(btc.dtype)
        else:
            k, u = rank_one
            key = adapter.to_btc(site.with_port("in"), args[0])
            w = (key.double() @ u) / (k @ u)
            add = (w[..., None] * delta.double()).to(btc.dtype)
        new = adapter.to_btc(site, btc + add)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    h = adapter.module(ctx.model, site).register_forward_hook(hook)
    try:
        return ctx.model(**inputs, use_cache=False).logits
    finally:
        h.remove()


@pytest.mark.parametrize("site", ["audio.layers.2.mlp.down", "text.layers.3.mlp.down"])
@pytest.mark.parametrize("form", ["span", "rank_one", "mix"])
def test_logits_and_gradients_equal_the_hook_path(setup, site, form):
    ctx, prep = setup
    a = ctx.adapter
    s = a.one(site)
    ab = span(ctx, prep, s, "subject")
    keys_in = capture(ctx, [s.with_port("in")], prep.inputs)[s.with_port("in")][0].double()
    C = a.width(s)
    g = torch.Generator().manual_seed(0)
    kw, shape = {}, (C,)
    if form == "rank_one":
        kw["rank_one"] = (keys_in[ab[0]:ab[1]].mean(0), torch.randn(keys_in.shape[-1], generator=g, dtype=torch.float64))
    elif form == "mix":
        kw["mix"] = torch.randn(3, keys_in.shape[-1], generator=g, dtype=torch.float64) / keys_in.shape[-1]
        shape = (3, C)
    init = 0.1 * torch.randn(shape, generator=g)
    grads, logits = [], []
    flags = [p.requires_grad for p in ctx.model.parameters()]
    for p in ctx.model.parameters():
        p.requires_grad_(False)
    try:
        for f in (hooked_logits, logits_with_delta):
            delta = init.clone().requires_grad_(True)
            lg = f(ctx, prep.inputs, s, ab, delta, **kw)
            torch.log_softmax(lg[0, prep.L - 1].float(), -1)[prep.new_ids[0]].backward()
            grads.append(delta.grad.clone())
            logits.append(lg.detach())
    finally:
        for p, fl in zip(ctx.model.parameters(), flags):
            p.requires_grad_(fl)
    assert torch.equal(logits[0], logits[1])
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in ctx.model.modules())


def test_capture_equals_a_plain_forward_hook(setup):
    ctx, prep = setup
    a = ctx.adapter
    sites = a.expand("audio.layers.*.mlp.down@in") + a.expand("text.layers.1:3.resid") + a.expand("audio.conv2")
    got = capture(ctx, sites, prep.inputs)
    for s in sites:
        seen = []
        mod = a.module(ctx.model, s)
        if s.port == "in":
            h = mod.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
        else:
            h = mod.register_forward_hook(lambda m, args, out: seen.append((out[0] if isinstance(out, tuple) else out).detach().clone()))
        try:
            with torch.no_grad():
                ctx.model(**prep.inputs, use_cache=False)
        finally:
            h.remove()
        assert torch.equal(got[s], a.to_btc(s, seen[0])), s
    assert wrapped(ctx) is wrapped(ctx)  # one nnsight wrapper per context
