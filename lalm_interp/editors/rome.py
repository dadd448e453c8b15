"""Single-layer rank-one editing (ROME-style) of one audio layer (encoder ``fc2``) or one text layer
(``mlp.down_proj``). The math is in :func:`rank_one_update`; see ``docs/editors/rome.md``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..sites import Site
from . import presets
from .base import (
    EditContext,
    EditHandle,
    Editor,
    EditorError,
    EditorWarning,
    EditRequest,
    key_inputs,
    register,
    require_mlp_down,
)
from .keys import (
    KEY_SPANS,
    frames,
    key_span_name,
    optimise_delta,
    pooled,
    prepare,
    prepare_prompt,
    second_moment,
)
from .losses import KL_DIRECTIONS, WD_FORMS

KEY_MODES = ("auto", "mean", "frames")
STREAMS = ("audio", "text")
"""(wd_form, kl_direction) of ``keys.optimise_delta`` before it took these options."""


def check_loss_options(where: str, hp: Any) -> None:
    """Validate the v*-loss options shared by ROME and AlphaEdit hyper-parameters."""
    if hp.wd_form not in WD_FORMS:
        raise EditorError(f"{where}.wd_form={hp.wd_form!r}; expected one of {list(WD_FORMS)} (docs/editors/rome.md).")
    if hp.kl_direction not in KL_DIRECTIONS:
        raise EditorError(f"{where}.kl_direction={hp.kl_direction!r}; expected one of {list(KL_DIRECTIONS)} "
                          "(docs/editors/rome.md).")
    streams = hp.weight_decay_streams
    if isinstance(streams, str) or not all(x in STREAMS for x in streams):
        raise EditorError(f"{where}.weight_decay_streams={streams!r}; expected a tuple of stream names from "
                          f"{list(STREAMS)}, e.g. ('audio',) or ('audio', 'text').")
    if hp.weight_decay < 0 or hp.kl_factor < 0:
        raise EditorError(f"{where}: weight_decay and kl_factor must be >= 0; got {hp.weight_decay}, {hp.kl_factor}.")


def optimise_value(ctx: EditContext, prep: Any, site: Site, name: str, hp: Any, **kw: Any):
    """:func:`~lalm_interp.editors.keys.optimise_delta` with the v*-loss settings of ``hp`` (ROME's or
    AlphaEdit's hyper-parameters): the weight decay applies only when ``site``'s stream is in
    ``hp.weight_decay_streams``; ``wd_form`` / ``kl_direction`` choose the loss terms of
    :mod:`~lalm_interp.editors.losses`. ``kw``: the remaining ``optimise_delta`` arguments."""
    wd = hp.weight_decay if site.stream in hp.weight_decay_streams else 0.0
    args = dict(steps=hp.steps, lr=hp.lr, weight_decay=wd, clamp_norm_factor=hp.clamp_norm_factor,
                kl_factor=hp.kl_factor, stop_nll=hp.stop_nll, wd_form=hp.wd_form, kl_direction=hp.kl_direction,
                **kw)
    return optimise_delta(ctx, prep, site, name, **args)


def key_mode(site: Site, mode: str, value_mode: str = "edit") -> str:
    """``"mean"`` or ``"frames"``: ``mode`` itself, or for ``"auto"`` ``"frames"`` on audio sites (many
    encoder frames per word) and ``"mean"`` on text sites (and whenever ``value_mode="span"``)."""
    if mode != "auto":
        return mode
    return "frames" if site.stream == "audio" and value_mode == "edit" else "mean"


@dataclass(frozen=True)
class RomeHParams:
    """Hyper-parameters of :class:`Rome`. The defaults are the ``paper`` preset (the paper's
    settings for Qwen2-Audio, ROME's published values where the paper is silent); the
    ``organism`` preset holds the measured settings for the tiny trained model
    (``lalm_interp/editors/presets/rome/*.json``, ``docs/editors/rome.md#paper-vs-this-implementation``).

    steps: Adam steps of the v* optimisation (paper: 10). Unit: Adam steps.
    lr: Adam learning rate of δ = v* − v (paper: 0.5, ROME's ``v_lr``). Unit: activation units per step.
    weight_decay: weight of the weight-decay term (ROME's ``v_weight_decay`` = 0.5). Unit: nats per
        ‖δ‖/‖v‖² (``wd_form="rome"``) or per (‖δ‖/‖v‖)² (``"squared"``).
    wd_form: ``"rome"`` (ROME's compute_v: weight_decay·‖δ‖/‖v‖²) or ``"squared"``
        (weight_decay·‖δ‖²/‖v‖², this project's first form); :mod:`~lalm_interp.editors.losses`.
    weight_decay_streams: the streams whose edits get the weight-decay term (paper: audio-layer
        edits only, ``("audio",)``; the term is 0 on other streams). Unit: stream names.
    kl_factor: weight of the KL term keeping the subject's other predictions (used only when the
        request has ``kl_prompts``; ROME: 0.0625). Unit: nats per nat.
    kl_direction: ``"rome"`` = KL(P_δ ‖ P₀), ROME's ``kl_div(log P₀, log P_δ, log_target=True)``,
        or ``"reverse"`` = KL(P₀ ‖ P_δ) (this project's first form).
    clamp_norm_factor: ‖δ‖ is clamped to this multiple of ‖v‖ after each step (ROME: 4). Unit: ratio.
    cov: ``"second_moment"`` (ROME: C = E[k kᵀ] of the corpus keys, from the cache) or
        ``"identity"`` (C = I: the minimum-norm update, the paper's eq. 7).
    cov_reg: when C is singular (smallest/largest eigenvalue below ``cov_rcond``), C + λ·(tr C/d)·I
        is used with λ = cov_reg, and an :class:`EditorWarning` is issued. Unit: fraction of the
        mean eigenvalue.
    cov_rcond: singularity threshold on the eigenvalue ratio. Unit: ratio.
    stop_nll: stop the v* optimisation early when the mean target NLL is below this (ROME stops at
        a total loss below 5e-2). Unit: nats.
    value_mode: how δ acts while v* is optimised: ``"span"`` (ROME's original) adds δ over the key
        span's positions only; ``"edit"`` adds δ·(uᵀx_t)/(uᵀk*) at every position t — exactly what
        ΔW will add, since the key is pooled over several frames/tokens.
    key_span: where k* and v* are taken: ``"word"`` = the request's subject word (``EditRequest.word``:
        first or last subject word, mean-pooled; on text sites its audio-token positions in the
        LLM), ``"last_token"`` = the prompt's final token (text sites only), ``"auto"`` =
        ``"last_token"`` on text sites and the subject word on audio sites.
    keys: ``"mean"`` (ROME, the paper's form: one key k* = the mean over the key span, a rank-one
        update with (W + ΔW) k* = v*), ``"frames"`` (one key per position of the span, solved
        jointly: ΔW = R (KᵀC⁻¹K + ρI)⁻¹ KᵀC⁻¹; see :func:`multi_key_update`; needs
        ``value_mode="edit"``) or ``"auto"`` (``"frames"`` on audio sites, ``"mean"`` on text
        sites and with ``value_mode="span"``).
    frames_reg: ρ of ``keys="frames"`` as a fraction of the mean eigenvalue of KᵀC⁻¹K. Unit: ratio.
    """

    steps: int = 10
    lr: float = 0.5
    weight_decay: float = 0.5
    wd_form: str = "rome"
    weight_decay_streams: tuple[str, ...] = ("audio",)
    kl_factor: float = 0.0625
    kl_direction: str = "rome"
    clamp_norm_factor: float = 4.0
    cov: str = "second_moment"
    cov_reg: float = 1e-2
    cov_rcond: float = 1e-7
    stop_nll: float = 0.05
    value_mode: str = "span"
    key_span: str = "word"
    keys: str = "mean"
    frames_reg: float = 1e-2

    def check(self) -> None:
        if self.key_span not in KEY_SPANS:
            raise EditorError(f"RomeHParams.key_span={self.key_span!r}; expected one of {list(KEY_SPANS)}.")
        if self.value_mode not in ("edit", "span"):
            raise EditorError(f"RomeHParams.value_mode={self.value_mode!r}; expected 'edit' or 'span'.")
        if self.keys not in KEY_MODES:
            raise EditorError(f"RomeHParams.keys={self.keys!r}; expected one of {list(KEY_MODES)}.")
        if self.keys == "frames" and self.value_mode != "edit":
            raise EditorError("RomeHParams: keys='frames' optimises one residual per key as the update applies "
                              "it, which needs value_mode='edit' (got 'span'); use keys='mean' for ROME's span form.")
        if self.frames_reg < 0:
            raise EditorError(f"RomeHParams.frames_reg must be >= 0; got {self.frames_reg}.")
        if self.cov not in ("second_moment", "identity"):
            raise EditorError(f"RomeHParams.cov={self.cov!r}; expected 'second_moment' or 'identity'.")
        check_loss_options("RomeHParams", self)
        if self.steps < 0 or self.lr <= 0 or self.clamp_norm_factor <= 0 or self.cov_reg <= 0:
            raise EditorError(f"RomeHParams: steps >= 0 and lr, clamp_norm_factor, cov_reg > 0 required; got {self}.")


def rank_one_update(W: torch.Tensor, k: torch.Tensor, v: torch.Tensor, C: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW = (v − W k)(C⁻¹k)ᵀ / (kᵀ C⁻¹ k), so that (W + ΔW) k = v.

    W: (out, in) weight (``y = W k``); k: (in,) key; v: (out,) value; C: (in, in) key second moment
    (``None``: identity, the minimum-Frobenius-norm update). Computed in float64.
    """
    W, k, v = W.double(), k.double(), v.double()
    u = k if C is None else torch.linalg.solve(C.double(), k)
    return torch.outer(v - W @ k, u) / (k @ u)


def multi_key_mix(K: torch.Tensor, C: torch.Tensor | None = None, reg: float = 0.0) -> torch.Tensor:
    """M = (KᵀC⁻¹K + ρ·I)⁻¹ KᵀC⁻¹, shape (n, in), so that the multi-key update is ΔW = R M.

    K: (in, n) keys (one column per frame); C: (in, in) key second moment (``None``: identity);
    reg: ρ as a fraction of the mean eigenvalue of KᵀC⁻¹K (0: exact, needs K of full column rank).
    Float64.
    """
    K = K.double()
    U = K if C is None else torch.linalg.solve(C.double(), K)  # C⁻¹K, (in, n)
    G = K.T @ U  # (n, n)
    n = G.shape[0]
    G = G + reg * float(torch.trace(G)) / n * torch.eye(n, dtype=G.dtype, device=G.device)
    return torch.linalg.solve(G, U.T)


def multi_key_update(W: torch.Tensor, K: torch.Tensor, V: torch.Tensor, C: torch.Tensor | None = None,
                     reg: float = 0.0) -> torch.Tensor:
    """ΔW = (V − W K)(KᵀC⁻¹K + ρI)⁻¹ KᵀC⁻¹: ROME's update with one key-value constraint per column.

    With ρ = 0 it is the ΔW of least ‖ΔW C^½‖_F with (W + ΔW) K = V exactly (ROME's derivation
    with n constraints instead of one); for n = 1 it equals :func:`rank_one_update`. rank(ΔW) ≤ n.
    W: (out, in); K: (in, n) keys; V: (out, n) values; C: (in, in) or ``None`` (identity); reg: ρ as
    in :func:`multi_key_mix`. Float64.
    """
    W, K, V = W.double(), K.double(), V.double()
    return (V - W @ K) @ multi_key_mix(K, C, reg)


def regularised(C: torch.Tensor, lam: float, rcond: float, where: str) -> torch.Tensor:
    """C itself, or C + λ·(tr C / d)·I with a warning when C is (numerically) singular."""
    if not torch.isfinite(C).all():
        raise EditorError(f"{where}: the key second moment has NaN/inf entries; recompute the statistics "
                          "(delete the cached stats file) and check the corpus audio.")
    w = torch.linalg.eigvalsh((C + C.T) / 2)
    top = float(w.max())
    if top <= 0:
        raise EditorError(f"{where}: the key second moment is zero; the corpus gave no non-zero keys.")
    if float(w.min()) <= rcond * top:
        d = C.shape[0]
        warnings.warn(
            f"{where}: key second moment C is singular (eigenvalues {float(w.min()):.3g} .. {top:.3g}); using "
            f"C + {lam:g}·(tr C/d)·I. Use a larger corpus to avoid this (docs/editors/rome.md).",
            EditorWarning, stacklevel=3,
        )
        return C + lam * float(torch.trace(C)) / d * torch.eye(d, dtype=C.dtype, device=C.device)
    return C


class Rome(Editor):
    """Rank-one edit of one ``mlp.down`` site per request (requests applied one after another)."""

    name = "rome"
    label = "ROME"
    HParams = RomeHParams
    accumulates = False
    summary = ("cov", "keys", "key_span", "value_mode", "steps", "lr")

    def __init__(self, sites: Any, hparams: Any = None, preset: str | None = None, **overrides: Any):
        super().__init__(sites, presets.resolve(self.name, hparams, preset), **overrides)
        self.preset = preset

    def check_sites(self, adapter: Any, sites: list[Site]) -> None:
        require_mlp_down(self.name, adapter, sites, n=1)

    def stats_sites(self, adapter: Any) -> list[Site]:
        """The edited site's key input when ``cov="second_moment"`` (ROME's C); none for ``"identity"``."""
        return key_inputs(self.resolve_sites(adapter)) if self.hparams.cov == "second_moment" else []

    def prefetch_stats(self, ctx: EditContext, sites: Sequence[Site]) -> None:
        """C at every site (``None`` for ``cov="identity"``: nothing to read)."""
        for s in sites:
            self.covariance(ctx, s)

    def covariance(self, ctx: EditContext, site: Site) -> torch.Tensor | None:
        if self.hparams.cov == "identity":
            return None
        key = f"rome.C:{site}:{self.hparams.cov_reg}:{self.hparams.cov_rcond}"
        if key not in ctx.memo:
            C = second_moment(ctx, site)
            ctx.memo[key] = regularised(C, self.hparams.cov_reg, self.hparams.cov_rcond, f"rome at {site}")
        return ctx.memo[key]

    def _edit(self, ctx: EditContext, requests: list[EditRequest], sites: list[Site], handle: EditHandle,
              inits: dict[int, torch.Tensor] | None = None) -> None:
        records = [self.edit_one(ctx, r, sites[0], handle, (inits or {}).get(i)) for i, r in enumerate(requests)]
        handle.info["requests"] = records

    def edit_one(self, ctx: EditContext, req: EditRequest, site: Site, handle: EditHandle,
                 init: torch.Tensor | None = None) -> dict[str, Any]:
        """Compute k*, v* and apply ΔW at ``site`` for one request; returns diagnostics."""
        hp, adapter = self.hparams, ctx.adapter
        C = self.covariance(ctx, site)
        prep = prepare(ctx, req)
        name = key_span_name(req, site, hp.key_span)
        kl = [(prepare_prompt(ctx, p, req.target_new), name) for p in req.kl_prompts]
        if key_mode(site, hp.keys, hp.value_mode) == "frames":
            return self._edit_frames(ctx, req, site, handle, init, C, prep, name, kl)
        k = pooled(ctx, prep, site.with_port("in"), name)  # k*: mean key over the subject word
        u = k if C is None else torch.linalg.solve(C, k)  # ΔW ∝ δ uᵀ
        res = optimise_value(ctx, prep, site, name, hp, kl_preps=kl, init=init,
                             rank_one=(k, u) if hp.value_mode == "edit" else None)
        module = adapter.module(ctx.model, site)
        handle.track(site, module, adapter.module_path(site))
        W = module.weight
        v_star = W.detach().double() @ k + res.delta.double()  # v* = W k* + δ (the bias cancels)
        dW = rank_one_update(W.detach(), k, v_star, C)
        with torch.no_grad():
            W.add_(dW.to(W.dtype))
        err = float((W.detach().double() @ k - v_star).norm() / max(float(v_star.norm()), 1e-30))
        return {"case_id": req.id, "site": str(site), "keys": "mean", "n_keys": 1, "nll": res.nll,
                "p_new_at_v_star": res.p_new, "k_norm": float(k.norm()), "v_norm": res.v0_norm,
                "delta_norm": res.delta_norm, "dW_fro": float(dW.norm()), "rel_error_Wk_v": err}

    def _edit_frames(self, ctx: EditContext, req: EditRequest, site: Site, handle: EditHandle,
                     init: torch.Tensor | None, C: torch.Tensor | None, prep: Any, name: str,
                     kl: list) -> dict[str, Any]:
        """``keys="frames"``: one key per position of the span, residuals R optimised jointly as ΔW = Rᵀ M."""
        hp, adapter = self.hparams, ctx.adapter
        K = frames(ctx, prep, site.with_port("in"), name).T  # (in, n): one key per frame of the word
        M = multi_key_mix(K, C, hp.frames_reg)  # (n, in)
        res = optimise_value(ctx, prep, site, name, hp, kl_preps=kl, init=init, mix=M)
        module = adapter.module(ctx.model, site)
        handle.track(site, module, adapter.module_path(site))
        W = module.weight
        V_star = W.detach().double() @ K + res.delta.double().T  # v*_t = W k_t + r_t per frame
        dW = res.delta.double().T @ M  # = multi_key_update(W, K, V_star, C, frames_reg)
        with torch.no_grad():
            W.add_(dW.to(W.dtype))
        err = float((W.detach().double() @ K - V_star).norm() / max(float(V_star.norm()), 1e-30))
        return {"case_id": req.id, "site": str(site), "keys": "frames", "n_keys": int(K.shape[1]), "nll": res.nll,
                "p_new_at_v_star": res.p_new, "k_norm": float(K.norm()), "v_norm": res.v0_norm,
                "delta_norm": res.delta_norm, "dW_fro": float(dW.norm()), "rel_error_Wk_v": err}


register(Rome)
