"""Multi-layer null-space editing (AlphaEdit-style) over several ``mlp.down`` sites of one stream.
The update is :func:`null_space_update`; the construction is in ``docs/editors/alphaedit.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..cache import nullspace_projector
from ..sites import Site
from . import presets
from .base import (
    EditContext,
    EditHandle,
    Editor,
    EditorError,
    EditRequest,
    key_inputs,
    register,
    require_mlp_down,
)
from .keys import (
    KEY_SPANS,
    corpus_keys,
    frames,
    key_span_name,
    pooled,
    prepare,
    prepare_prompt,
    second_moment,
)
from .rome import KEY_MODES, check_loss_options, key_mode, optimise_value


@dataclass(frozen=True)
class AlphaEditHParams:
    """Hyper-parameters of :class:`AlphaEdit`. The defaults are the ``paper`` preset (the paper's
    settings; AlphaEdit's published values for the null space, ROME's for the v* loss where the
    paper is silent); ``organism`` holds the measured settings for the tiny trained model
    (``docs/editors/alphaedit.md#paper-vs-this-implementation``).

    steps / lr / weight_decay / wd_form / weight_decay_streams / kl_factor / kl_direction /
        clamp_norm_factor / stop_nll: the v* optimisation at the last selected layer's output
        (the residual stream after it), as in :class:`~lalm_interp.editors.rome.RomeHParams`
        (units: Adam steps, activation units per step, nats per ‖δ‖/‖v‖², -, stream names, nats per
        nat, -, ratio, nats). Defaults 10 / 0.5 / 0.5 / "rome" / ("audio",) / 0.0625 / "rome" / 4 / 0.05.
    nullspace_threshold: eigenvalues of E[k₀k₀ᵀ] (protected keys, count-normalised) below this span
        the null space that P projects onto. Unit: the eigenvalue's own unit (squared activation)
        when ``threshold_mode="absolute"`` (AlphaEdit: 2e-2, the default), a fraction of the
        largest eigenvalue when ``"relative"``.
    threshold_mode: ``"absolute"`` (AlphaEdit's code, default) or ``"relative"``.
    l2: the weight λ of I in (K_pK_pᵀP + K₁K₁ᵀP + λ·I)⁻¹. With ``l2_mode="absolute"`` (default)
        λ = l2 (AlphaEdit's ``L2`` = 10); with ``"relative"`` λ = l2 · tr(E[k₀k₀ᵀ])/d, the mean
        per-dimension energy of the protected keys. Unit: squared key units (absolute) or fraction
        of the mean eigenvalue (relative).
    l2_mode: ``"absolute"`` or ``"relative"``.
    layer_weights: ``"memit"`` (layer i of n takes 1/(n−i) of the remaining residual) or an explicit
        tuple of n fractions. Unit: fraction of the residual.
    key_span: ``"word"`` (default: the request's subject word, mean-pooled), ``"last_token"`` or
        ``"auto"`` (last token on text sites, subject word on audio sites); see
        :class:`~lalm_interp.editors.rome.RomeHParams`.
    keys: ``"mean"`` (AlphaEdit/MEMIT: one key per request, the mean over its key span, with target
        z = pooled residual + δ), ``"frames"`` (one key per position of the span, each with its own
        target z_t = h_t + δ_t, the δ_t optimised jointly) or ``"auto"`` (``"frames"`` on audio
        sites, ``"mean"`` on text sites). Default ``"mean"`` (the paper's form).
    leak_sample: how many protected corpus keys (the first ones of the corpus, per layer) the
        record's leak max|ΔW K₀| / max|W K₀| is measured on; 0 skips it. Unit: keys.
    """

    steps: int = 10
    lr: float = 0.5
    weight_decay: float = 0.5
    wd_form: str = "rome"
    weight_decay_streams: tuple[str, ...] = ("audio",)
    kl_factor: float = 0.0625
    kl_direction: str = "rome"
    clamp_norm_factor: float = 4.0
    stop_nll: float = 0.05
    nullspace_threshold: float = 2e-2
    threshold_mode: str = "absolute"
    l2: float = 10.0
    l2_mode: str = "absolute"
    layer_weights: "str | tuple[float, ...]" = "memit"
    key_span: str = "word"
    keys: str = "mean"
    leak_sample: int = 4096

    def check(self) -> None:
        if self.key_span not in KEY_SPANS:
            raise EditorError(f"AlphaEditHParams.key_span={self.key_span!r}; expected one of {list(KEY_SPANS)}.")
        if self.keys not in KEY_MODES:
            raise EditorError(f"AlphaEditHParams.keys={self.keys!r}; expected one of {list(KEY_MODES)}.")
        if self.threshold_mode not in ("relative", "absolute"):
            raise EditorError(f"AlphaEditHParams.threshold_mode={self.threshold_mode!r}; expected 'relative' or 'absolute'.")
        if self.l2_mode not in ("relative", "absolute"):
            raise EditorError(f"AlphaEditHParams.l2_mode={self.l2_mode!r}; expected 'relative' or 'absolute'.")
        if self.l2 <= 0 or self.nullspace_threshold < 0 or self.steps < 0 or self.lr <= 0:
            raise EditorError(f"AlphaEditHParams: l2 > 0, nullspace_threshold >= 0, steps >= 0, lr > 0 required; got {self}.")
        check_loss_options("AlphaEditHParams", self)
        if self.leak_sample < 0:
            raise EditorError(f"AlphaEditHParams.leak_sample must be >= 0 (0: no leak measurement); got {self.leak_sample}.")
        if self.layer_weights != "memit" and not isinstance(self.layer_weights, tuple):
            raise EditorError(f"AlphaEditHParams.layer_weights={self.layer_weights!r}; expected 'memit' or a tuple of floats.")


def null_space_update(R: torch.Tensor, K1: torch.Tensor, P: torch.Tensor, KpKp: torch.Tensor | None = None,
                      l2: float = 1.0) -> torch.Tensor:
    """ΔW = R K₁ᵀ P (K_pK_pᵀ P + K₁K₁ᵀ P + l2·I)⁻¹.

    R: (out, n) residuals; K1: (in, n) keys of the edits; P: (in, in) projector onto the null
    space of the protected keys K₀ (so ΔW K₀ = 0 whenever P K₀ = 0); KpKp: (in, in) sum of k kᵀ
    over previously edited keys (``None``: none yet). Float64.
    """
    R, K1, P = R.double(), K1.double(), P.double()
    d = K1.shape[0]
    A = K1 @ K1.T
    if KpKp is not None:
        A = A + KpKp.double()
    M = A @ P + l2 * torch.eye(d, dtype=torch.float64, device=K1.device)
    rhs = R @ K1.T @ P  # (out, in)
    return torch.linalg.solve(M.T, rhs.T).T


def layer_weights(spec: "str | Sequence[float]", n: int) -> list[float]:
    if spec == "memit":
        return [1.0 / (n - i) for i in range(n)]
    w = [float(x) for x in spec]  # type: ignore[union-attr]
    if len(w) != n:
        raise EditorError(f"layer_weights has {len(w)} entries for {n} edited layers; give one per layer.")
    return w


class AlphaEdit(Editor):
    """Null-space constrained multi-layer edit; previously edited keys accumulate across calls."""

    name = "alphaedit"
    label = "AlphaEdit"
    HParams = AlphaEditHParams
    accumulates = True
    summary = ("keys", "key_span", "nullspace_threshold", "threshold_mode", "l2", "l2_mode", "steps", "lr")

    def __init__(self, sites: Any, hparams: Any = None, preset: str | None = None, **overrides: Any):
        super().__init__(sites, presets.resolve(self.name, hparams, preset), **overrides)
        self.preset = preset
        self.kp: dict[str, torch.Tensor] = {}
        self.w_first: dict[str, torch.Tensor] = {}  # weights before the first edit since reset()
        self.n_edited = 0
        self._generation = 0  # bumped by reset(): a revert after a reset leaves the fresh state alone

    def reset(self) -> None:
        self.kp = {}
        self.w_first = {}
        self.n_edited = 0
        self._generation = getattr(self, "_generation", 0) + 1

    def check_sites(self, adapter: Any, sites: list[Site]) -> None:
        require_mlp_down(self.name, adapter, sites)

    def stats_sites(self, adapter: Any) -> list[Site]:
        """Every edited site's key input: the protected keys' E[k₀k₀ᵀ] gives each layer's projector P."""
        return key_inputs(self.resolve_sites(adapter))

    def prefetch_stats(self, ctx: EditContext, sites: Sequence[Site]) -> None:
        """P and the ridge weight at every site (reads E[kkᵀ]), and the sample of protected keys K₀
        for the leak measurement."""
        for s in sites:
            self.projector(ctx, s)
            self.protected_sample(ctx, s)

    def _state(self) -> list[str]:
        return [f"edits since reset()={self.n_edited}"] if self.n_edited else []

    def projector(self, ctx: EditContext, site: Site) -> tuple[torch.Tensor, float]:
        """(P, λ) at ``site``: the null-space projector of the protected keys and the ridge weight."""
        P, mean_eig, _ = self._projector(ctx, site)
        hp = self.hparams
        return P, hp.l2 * mean_eig if hp.l2_mode == "relative" else hp.l2

    def _projector(self, ctx: EditContext, site: Site) -> tuple[torch.Tensor, float, float]:
        """(P, mean eigenvalue of E[k₀k₀ᵀ], ‖P K₀‖/‖K₀‖) — the last = sqrt(tr(PΣ)/tr Σ) over every
        protected key (P is a symmetric projector, so ‖P K₀‖²_F = n·tr(P Σ P) = n·tr(P Σ))."""
        hp = self.hparams
        key = f"alphaedit.P:{site}:{hp.nullspace_threshold}:{hp.threshold_mode}"
        if key not in ctx.memo:
            mom = second_moment(ctx, site)  # torch in, torch out: P lands on the weights' device
            P = nullspace_projector(mom, hp.nullspace_threshold, relative=hp.threshold_mode == "relative")
            tr = float(mom.trace())
            frac = (max(float(torch.trace(P @ mom)), 0.0) / tr) ** 0.5 if tr > 0 else 0.0
            ctx.memo[key] = (P, tr / mom.shape[0], frac)
        return ctx.memo[key]

    def protected_sample(self, ctx: EditContext, site: Site) -> torch.Tensor | None:
        """Up to ``leak_sample`` protected corpus keys at ``site`` (n, in), float64 on the weights'
        device — the first ones of the corpus stream, memoised per context; ``None`` if 0."""
        n = self.hparams.leak_sample
        if n <= 0:
            return None
        key = f"alphaedit.K0:{site.with_port('in')}:{n}"
        if key not in ctx.memo:
            rows, got = [], 0
            for batch in corpus_keys(ctx, site.with_port("in")):
                rows.append(torch.from_numpy(batch[: n - got]))
                got += len(rows[-1])
                if got >= n:
                    break
            ctx.memo[key] = torch.cat(rows).double()
        return ctx.memo[key]

    def _edit(self, ctx: EditContext, requests: list[EditRequest], sites: list[Site], handle: EditHandle,
              inits: dict[int, torch.Tensor] | None = None) -> None:
        hp, adapter = self.hparams, ctx.adapter
        weights = layer_weights(hp.layer_weights, len(sites))
        projectors = [self.projector(ctx, s) for s in sites]
        for s in sites:  # the protected keys of the unedited model, fetched before any layer changes
            self.protected_sample(ctx, s)
        last = sites[-1]
        z_site = Site(last.stream, ("layers", last.layer, "resid"))  # residual stream after the last layer
        preps = [prepare(ctx, r) for r in requests]

        mode = key_mode(last, hp.keys)

        def keyed(ctx: EditContext, p: Any, site: Site, name: str) -> torch.Tensor:  # (keys of p, width)
            return frames(ctx, p, site, name) if mode == "frames" else pooled(ctx, p, site, name)[None]

        names = [key_span_name(r, last, hp.key_span) for r in requests]
        targets, deltas = [], []
        for i, (r, p, name) in enumerate(zip(requests, preps, names)):
            kl = [(prepare_prompt(ctx, q, r.target_new), name) for q in r.kl_prompts]
            res = optimise_value(ctx, p, z_site, name, hp, kl_preps=kl, init=(inits or {}).get(i),
                                 per_position=mode == "frames")
            targets.append(keyed(ctx, p, z_site, name) + res.delta.double())
            deltas.append({"case_id": r.id, "nll": res.nll, "delta_norm": res.delta_norm, "v_norm": res.v0_norm})
        Z = torch.cat(targets)  # (n keys, D)
        pending: dict[str, torch.Tensor] = {}
        first: dict[str, torch.Tensor] = {}
        layers = []
        for i, (site, (P, lam)) in enumerate(zip(sites, projectors)):
            K1 = torch.cat([keyed(ctx, p, site.with_port("in"), nm) for p, nm in zip(preps, names)]).T  # (in, n)
            cur = torch.cat([keyed(ctx, p, z_site, nm) for p, nm in zip(preps, names)])
            R = (Z - cur).T * weights[i]  # (D, n): this layer's share of what is still missing
            module = adapter.module(ctx.model, site)
            path = adapter.module_path(site)
            handle.track(site, module, path)
            dW = null_space_update(R, K1, P, self.kp.get(str(site)), lam)
            measure = hp.leak_sample > 0
            w_before = module.weight.detach().clone() if measure else None  # weight dtype: no float64 copy of a 7B layer
            with torch.no_grad():
                module.weight.add_(dW.to(module.weight.dtype))
            pending[str(site)] = K1 @ K1.T
            if measure:
                first.setdefault(str(site), w_before)
            layers.append({"site": str(site), "nullity": int(round(float(torch.trace(P)))), "dim": int(P.shape[0]),
                           "protected_in_nullspace": self._projector(ctx, site)[2],
                           "key_in_nullspace": float((P @ K1).norm() / max(float(K1.norm()), 1e-30)),
                           "residual_norm": float(R.norm()), "dW_fro": float(dW.norm()), "l2": lam,
                           "achieved": float((dW @ K1).norm() / max(float(R.norm()), 1e-30)),
                           **(self._leak(ctx, site, module.weight.detach(), w_before,
                                         self.w_first.get(str(site), w_before)) if measure else {})})
        kp_before = {s: self.kp.get(s) for s in pending}
        first_new = [s for s in pending if s in first and s not in self.w_first]
        for s, kk in pending.items():  # commit the accumulated keys only once the whole edit succeeded
            self.kp[s] = self.kp[s] + kk if s in self.kp else kk
            if s in first:
                self.w_first.setdefault(s, first[s])
        self.n_edited += len(requests)

        generation = self._generation

        def forget() -> None:  # reverting the edit forgets its keys exactly (they no longer exist)
            if self._generation != generation:
                return
            for s, kk in kp_before.items():
                if kk is None:
                    self.kp.pop(s, None)
                else:
                    self.kp[s] = kk
            for s in first_new:
                self.w_first.pop(s, None)
            self.n_edited -= len(requests)

        handle.on_revert(forget)
        handle.info.update({"keys": mode, "n_keys": int(Z.shape[0]), "targets": deltas, "layers": layers,
                            "n_previous_edits": self.n_edited - len(requests),
                            "leak": max((x["leak"] for x in layers if "leak" in x), default=None),
                            "leak_total": max((x["leak_total"] for x in layers if "leak_total" in x), default=None)})

    def _leak(self, ctx: EditContext, site: Site, W_now: torch.Tensor, W_before: torch.Tensor,
              W_first: torch.Tensor) -> dict[str, Any]:
        """max|ΔW K₀| / max|W K₀| over the sampled protected keys, for this edit (ΔW = W_now − W_before:
        ``leak``) and for every edit since :meth:`reset` (ΔW = W_now − W_first: ``leak_total``); the
        bias is left out (ΔW does not change it). Float64."""
        K0 = self.protected_sample(ctx, site).to(W_now.device)

        def ratio(w: torch.Tensor, w0: torch.Tensor) -> float:
            w, w0 = w.double(), w0.double()
            return float((K0 @ (w - w0).T).abs().max() / max(float((K0 @ w0.T).abs().max()), 1e-30))

        return {"leak": ratio(W_now, W_before), "leak_total": ratio(W_now, W_first),
                "n_protected_checked": int(K0.shape[0])}


register(AlphaEdit)
