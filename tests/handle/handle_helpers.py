"""Shared pieces of the handle tests: deterministic noise clips and a torch-hook reference reader."""

from __future__ import annotations

import numpy as np
import torch


def noise(seconds: float, seed: int) -> np.ndarray:
    """Deterministic quiet noise (float32, mono, 16 kHz)."""
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)


def hooked(model, adapter, inputs, sites):
    """Reference: plain torch forward hooks on the real modules."""
    got, handles = {}, []
    for s in sites:
        mod = adapter.module(model, s)
        if s.port == "in":
            handles.append(mod.register_forward_pre_hook(lambda m, a, s=s: got.__setitem__(s, adapter.to_btc(s, a[0]).clone())))
        else:
            handles.append(mod.register_forward_hook(lambda m, a, o, s=s: got.__setitem__(s, adapter.to_btc(s, adapter.select(s, o)).clone())))
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return got
