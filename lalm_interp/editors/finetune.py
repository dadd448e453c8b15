"""Fine-tuning baseline: Adam on the weights of the selected modules to maximise log P(target_new),
with an optional L∞ norm constraint around the original weights (ROME's FT-L). See
``docs/editors/finetune.md``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..scoring import logprobs_from_logits
from ..sites import Site
from .base import EditContext, EditHandle, Editor, EditorError, EditRequest, register
from .keys import frozen, prepare


@dataclass(frozen=True)
class FineTuneHParams:
    """Hyper-parameters of :class:`FineTune`.

    steps: Adam steps over all requests together (default 30). Unit: steps.
    lr: Adam learning rate (default 2e-2; 5e-3 flipped 0-25 % of the organism's known facts in
        25 steps, 2e-2 flipped 75-100 %). Unit: weight units per step.
    norm_constraint: if set, every weight stays within ±norm_constraint of its original value
        (clamped after each step; FT-L). ``None``: unconstrained. Unit: weight units (L∞).
    weight_decay: Adam's L2 weight decay. Unit: per step.
    stop_nll: stop early when the mean NLL of target_new is below this. Unit: nats.
    """

    steps: int = 30
    lr: float = 2e-2
    norm_constraint: float | None = None
    weight_decay: float = 0.0
    stop_nll: float = 0.05

    def check(self) -> None:
        if self.steps < 0 or self.lr <= 0 or (self.norm_constraint is not None and self.norm_constraint <= 0):
            raise EditorError(f"FineTuneHParams: steps >= 0, lr > 0, norm_constraint > 0 or None required; got {self}.")


class FineTune(Editor):
    """Adam on ``module.weight`` of each selected site (any site whose module has a weight)."""

    name = "finetune"
    label = "FT"
    HParams = FineTuneHParams
    accumulates = False

    def check_sites(self, adapter: Any, sites: list[Site]) -> None:
        for s in sites:
            path = adapter.module_path(s)
            if s.component not in ("mlp.down", "conv1", "conv2") or s.port != "out":
                raise EditorError(
                    f"finetune cannot edit site {s} ({path}): it trains one weight matrix per site; use "
                    "'STREAM.layers.N.mlp.down' (fc2 / mlp.down_proj), 'audio.conv1', 'audio.conv2'."
                )

    def _edit(self, ctx: EditContext, requests: list[EditRequest], sites: list[Site], handle: EditHandle) -> None:
        hp, adapter, model = self.hparams, ctx.adapter, ctx.model
        weights = []
        for s in sites:
            module = adapter.module(model, s)
            if not isinstance(getattr(module, "weight", None), torch.nn.Parameter):
                raise EditorError(f"finetune: site {s} ({adapter.module_path(s)}) has no weight parameter.")
            handle.track(s, module, adapter.module_path(s))
            weights.append(module.weight)
        originals = [w.detach().clone() for w in weights]
        preps = [prepare(ctx, r) for r in requests]
        opt = torch.optim.Adam(weights, lr=hp.lr, weight_decay=hp.weight_decay)
        trace = []
        with frozen(model, weights), torch.enable_grad():
            for step in range(hp.steps + 1):
                loss = 0.0
                for p in preps:
                    logits = model(**p.inputs, use_cache=False).logits
                    _, total = logprobs_from_logits(logits, [p.new_ids], p.L)
                    loss = loss + (-total[0] / len(p.new_ids)) / len(preps)
                trace.append(float(loss.detach()))
                if step == hp.steps or trace[-1] < hp.stop_nll:
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
                if hp.norm_constraint is not None:
                    with torch.no_grad():
                        for w, w0 in zip(weights, originals):
                            w.copy_(torch.clamp(w, w0 - hp.norm_constraint, w0 + hp.norm_constraint))
        for w in weights:
            w.grad = None
        handle.info["nll"] = trace


register(FineTune)
