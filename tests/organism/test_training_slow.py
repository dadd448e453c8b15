"""A short training run from the recipe: the loss falls, and two runs with one seed are bitwise equal."""

from __future__ import annotations

import pytest
import torch

from lalm_interp.organism.recipe import Recipe
from lalm_interp.organism.train import train


@pytest.mark.slow
def test_short_run_learns_and_is_bitwise_reproducible(tmp_path):
    r = Recipe().replace(n_subjects=3, train_renditions=Recipe().train_renditions[:1], heldout_renditions=(),
                         steps=60, batch_size=8, warmup_frac=0.1)
    a = train(r, tmp_path, log_every=10, progress=False)
    b = train(r, tmp_path, log_every=10, progress=False)  # clips reused; everything else recomputed
    la, lb = [e["loss"] for e in a.log], [e["loss"] for e in b.log]
    assert la == lb
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    # the loss falls: from ~ln(vocab) to well below it, mostly step by step
    assert la[-1] < 0.6 * la[0]
    assert sum(x > y for x, y in zip(la, la[1:])) >= len(la) - 2
