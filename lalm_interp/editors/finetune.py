"""Fine-tuning baseline: Adam on the parameters of the selected modules (the weight, and with
``params="weight+bias"`` the bias, as ROME's FT) to maximise log P(target_new), with an optional
L∞ norm constraint around the original values (ROME's FT-L). Audio and text sites together are
trained audio first, then text (``order="audio_then_text"``) or jointly. See
``docs/editors/finetune.md``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..scoring import logprobs_from_logits
from ..sites import Site
from . import presets
from .base import EditContext, EditHandle, Editor, EditorError, EditRequest, register
from .keys import frozen, prepare

PARAMS = ("weight", "weight+bias")
ORDERS = ("joint", "audio_then_text")


@dataclass(frozen=True)
class FineTuneHParams:
    """Hyper-parameters of :class:`FineTune`. The defaults are the ``paper`` preset (the paper
    says "fine-tuning of selected layers" and nothing more; the values are ROME's FT baseline,
    ``hparams/FT/*_unconstr.json``); ``organism`` holds the measured settings for the tiny model.

    steps: Adam steps over all requests together (ROME FT: 25), per stage with
        ``order="audio_then_text"``. Unit: steps.
    lr: Adam learning rate (ROME FT: 5e-4). Unit: weight units per step.
    params: which parameters of each selected module are trained: ``"weight+bias"`` (ROME FT: every
        parameter of the rewritten module, ``mlp.c_proj`` weight and bias) or ``"weight"``.
    order: with audio and text sites together (the Multi row): ``"audio_then_text"`` trains the
        audio sites first (``steps`` steps), then the text sites on the audio-tuned model
        (``steps`` more) — the paper's sequential order for Multi edits (§3.2); ``"joint"`` trains
        all selected sites in one Adam run. One stream: identical.
    norm_constraint: if set, every trained parameter stays within ±norm_constraint of its original
        value (clamped after each step; ROME's FT-L). ``None``: unconstrained. Unit: weight units (L∞).
    weight_decay: Adam's L2 weight decay (ROME FT: 0). Unit: per step.
    stop_nll: stop a stage early when the mean NLL of target_new is below this (ROME FT: 1e-2).
        Unit: nats.
    """

    steps: int = 25
    lr: float = 5e-4
    params: str = "weight+bias"
    order: str = "audio_then_text"
    norm_constraint: float | None = None
    weight_decay: float = 0.0
    stop_nll: float = 1e-2

    def check(self) -> None:
        if self.steps < 0 or self.lr <= 0 or (self.norm_constraint is not None and self.norm_constraint <= 0):
            raise EditorError(f"FineTuneHParams: steps >= 0, lr > 0, norm_constraint > 0 or None required; got {self}.")
        if self.params not in PARAMS:
            raise EditorError(f"FineTuneHParams.params={self.params!r}; expected one of {list(PARAMS)}.")
        if self.order not in ORDERS:
            raise EditorError(f"FineTuneHParams.order={self.order!r}; expected one of {list(ORDERS)}.")


class FineTune(Editor):
    """Adam on the weight (and bias) of each selected module, optionally audio stage first (see module docstring)."""

    name = "finetune"
    label = "FT"
    HParams = FineTuneHParams
    accumulates = False
    summary = ("steps", "lr", "params", "order", "norm_constraint")

    def __init__(self, sites: Any, hparams: Any = None, preset: str | None = None, **overrides: Any):
        super().__init__(sites, presets.resolve(self.name, hparams, preset), **overrides)
        self.preset = preset

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
        names = ("weight",) if hp.params == "weight" else ("weight", "bias")
        per_site = []
        for s in sites:
            module = adapter.module(model, s)
            if not isinstance(getattr(module, "weight", None), torch.nn.Parameter):
                raise EditorError(f"finetune: site {s} ({adapter.module_path(s)}) has no weight parameter.")
            handle.track(s, module, adapter.module_path(s))
            per_site.append((s, [getattr(module, n) for n in names if isinstance(getattr(module, n, None), torch.nn.Parameter)]))
        if hp.order == "audio_then_text":
            stages = [[p for s, ps in per_site if s.stream == st for p in ps] for st in ("audio", "text")]
            stages = [st for st in stages if st]
        else:
            stages = [[p for _, ps in per_site for p in ps]]
        preps = [prepare(ctx, r) for r in requests]
        traces = [self._train(model, preps, params) for params in stages]
        handle.info["nll"] = [x for t in traces for x in t]
        handle.info["stages"] = [{"params": [f"{adapter.module_path(s)}.{n}" for s, ps in per_site
                                             for n, p in zip(names, ps) if any(p is q for q in st)],
                                  "nll": t} for st, t in zip(stages, traces)]

    def _train(self, model: torch.nn.Module, preps: list, params: list[torch.nn.Parameter]) -> list[float]:
        """Adam on ``params`` for the mean target NLL over ``preps``; returns the loss trace."""
        hp = self.hparams
        originals = [w.detach().clone() for w in params]
        opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        trace: list[float] = []
        with frozen(model, params), torch.enable_grad():
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
                        for w, w0 in zip(params, originals):
                            w.copy_(torch.clamp(w, w0 - hp.norm_constraint, w0 + hp.norm_constraint))
        for w in params:
            w.grad = None
        return trace


register(FineTune)
