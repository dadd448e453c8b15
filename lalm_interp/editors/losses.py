"""The two regularisers of the value (v*) optimisation, in each form an editor can choose.

ROME's ``compute_v`` (and AlphaEdit's ``compute_z``) optimise δ on

    NLL(target_new) + kl_factor · KL + v_weight_decay · ‖δ‖ / ‖v‖²

with ``KL = torch.nn.functional.kl_div(log P₀, log P_δ, log_target=True, reduction="batchmean")``,
which is KL(P_δ ‖ P₀) = Σ P_δ (log P_δ − log P₀): the *edited* distribution against the original
one, on the KL prompts' next token. The first version of this project used ‖δ‖²/‖v‖² and
KL(P₀ ‖ P_δ); both stay available by name:

=================  ==========================================  =====================
option             term                                        where from
=================  ==========================================  =====================
wd_form "rome"     weight · ‖δ‖ / ‖v‖²                         ROME / AlphaEdit code
wd_form "squared"  weight · ‖δ‖² / ‖v‖²                        this project, v0.1
kl "rome"          KL(P_δ ‖ P₀) = Σ P_δ (log P_δ − log P₀)     ROME / AlphaEdit code
kl "reverse"       KL(P₀ ‖ P_δ) = Σ P₀ (log P₀ − log P_δ)      this project, v0.1
=================  ==========================================  =====================

``v`` is the unedited value at the key span (ROME's ``target_init``); ‖·‖ is the Frobenius norm
when δ has one row per key. See ``docs/editors/rome.md#paper-vs-this-implementation``.
"""

from __future__ import annotations

import torch

WD_FORMS = ("rome", "squared")
KL_DIRECTIONS = ("rome", "reverse")


def weight_decay_term(delta: torch.Tensor, v0_norm: float, weight: float, form: str = "rome") -> torch.Tensor:
    """The weight-decay term of the v* loss (a 0-d tensor, differentiable in ``delta``).

    ``form="rome"``: weight · ‖δ‖ / ‖v‖² (ROME's compute_v); ``"squared"``: weight · ‖δ‖² / ‖v‖².
    ``v0_norm`` = ‖v‖ (floored at 1e-8). Unit: nats."""
    v2 = max(float(v0_norm), 1e-8) ** 2
    if form == "rome":
        return weight * delta.norm() / v2
    if form == "squared":
        return weight * delta.pow(2).sum() / v2
    raise ValueError(f"weight-decay form {form!r}; expected one of {list(WD_FORMS)}")


def kl_term(log_p0: torch.Tensor, log_pd: torch.Tensor, direction: str = "rome") -> torch.Tensor:
    """KL between the original (``log_p0``) and edited (``log_pd``) next-token log-distributions,
    summed over the vocabulary and averaged over leading (batch) dims — ROME's ``batchmean``.

    ``direction="rome"``: KL(P_δ ‖ P₀), exactly ``torch.nn.functional.kl_div(log_p0, log_pd,
    log_target=True, reduction="batchmean")`` as ROME's compute_v calls it; ``"reverse"``:
    KL(P₀ ‖ P_δ). Unit: nats."""
    if direction == "rome":
        p, a, b = log_pd.exp(), log_pd, log_p0
    elif direction == "reverse":
        p, a, b = log_p0.exp(), log_p0, log_pd
    else:
        raise ValueError(f"KL direction {direction!r}; expected one of {list(KL_DIRECTIONS)}")
    total = torch.sum(p * (a - b), dim=-1)
    return total.mean() if total.ndim else total
