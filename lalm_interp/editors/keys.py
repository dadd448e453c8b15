"""Keys and values for editors, read and changed with the intervention engine's site-addressed
primitives (:mod:`lalm_interp.interventions.primitives`) inside nnsight traces.

* :func:`prepare` turns an :class:`EditRequest` into a
  :class:`~lalm_interp.prompts.PreparedPrompt`: model inputs, a position map and
  object ids.
* :func:`capture` reads module inputs (``site@in``: the key) or outputs in one forward pass.
* :func:`pooled` mean-pools a site over a request's subject-word span (audio: encoder frames of
  the word; text: the LLM audio-token positions of the word — the subject is spoken, so its
  "tokens" on the text side are audio tokens); :func:`frames` keeps every position of the span
  (one key per encoder frame for ``keys="frames"``).
* :func:`key_stats` gives the second moment of keys at a site over a :class:`KeyCorpus`, from the
  activation cache (computed and cached on first use).
* :func:`optimise_delta` finds the value change δ (v* = v + δ) that maximises log P(target_new),
  through :func:`logits_with_delta` (one traced forward with δ added; gradients reach δ).

Parameters' ``requires_grad`` flags are always restored (:func:`frozen`).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..cache import SecondMoment
from ..inputs import build_inputs, model_placement, place, window_samples
from ..prompts import PreparedPrompt
from ..interventions.primitives import add, in_forward_order, read
from ..scoring import logprobs_from_logits
from ..sites import Site, parse
from ..spans import SEQ
from ..wrap import wrap
from .base import EditContext, EditorError, EditorWarning, EditRequest, weights_fingerprint
from .losses import kl_term, weight_decay_term


# ---------------------------------------------------------------------------- prepared prompts
def prepare_prompt(ctx: EditContext, prompt: Any, target: str) -> PreparedPrompt:
    """``prompt`` with ``target`` teacher-forced, its inputs on the context's model
    (:class:`~lalm_interp.prompts.PreparedPrompt`; ``.new_ids`` are ``target``'s tokens)."""
    return PreparedPrompt.make(ctx.processor, ctx.adapter, prompt, target, model=ctx.model)


def prepare(ctx: EditContext, req: EditRequest) -> PreparedPrompt:
    """The edit prompt of ``req`` with target_new teacher-forced."""
    return prepare_prompt(ctx, req.prompt, req.target_new)


KEY_SPANS = ("auto", "word", "last_token")


def key_span_name(req: EditRequest, site: Site, mode: str) -> str:
    """The span an editor keys ``req`` at on ``site``: ``"word"`` = the request's subject word span
    (ROME: the last subject token); ``"last_token"`` = the prompt's final token (text sites only);
    ``"auto"`` = ``"last_token"`` on text sites, the subject word on audio sites."""
    if mode not in KEY_SPANS:
        raise EditorError(f"key_span={mode!r}; expected one of {list(KEY_SPANS)}.")
    if mode == "auto":
        mode = "last_token" if site.stream == "text" else "word"
    if mode == "last_token":
        if site.stream != "text":
            raise EditorError(f"key_span='last_token' is a text position; {site} is an audio site (use 'word').")
        return "last_token"
    return req.span_name


def span(ctx: EditContext, prep: PreparedPrompt, site: Site, name: str) -> tuple[int, int]:
    """Half-open positions of span ``name`` on the time axis of ``site`` (encoder frames or LLM seq)."""
    stage = ctx.adapter.stage(site)
    a, b = prep.pm.span(name, stage)
    if b <= a:
        raise EditorError(f"span {name!r} is empty at {site} (stage {stage}); the word is too short for this stage.")
    return a, b


# ---------------------------------------------------------------------------- hooks
@contextmanager
def frozen(model: torch.nn.Module, trainable: Sequence[torch.nn.Parameter] = ()) -> Iterator[None]:
    """Turn ``requires_grad`` off on every parameter (on for ``trainable``), restore on exit."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    keep = {id(p) for p in trainable}
    try:
        for p in params:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def wrapped(ctx: EditContext) -> Any:
    """The ``nnsight.NNsight`` around ``ctx.model``, made once per context (or the handle's,
    ``ctx.lm.wrapped``): making one walks the whole module tree (~20 ms on the organism), and the
    value optimisation traces dozens of forwards."""
    lm = getattr(ctx, "lm", None)
    if lm is not None and getattr(lm, "model", None) is ctx.model and hasattr(lm, "wrapped"):
        return lm.wrapped
    have = ctx.memo.get(_WRAPPED)
    if have is None or have[0] is not ctx.model:
        have = ctx.memo[_WRAPPED] = (ctx.model, wrap(ctx.model))
    return have[1]


_WRAPPED = "nnsight:wrapped"
"""``ctx.memo`` key of (model, its nnsight wrapper)."""


def capture(ctx: EditContext, sites: Sequence[Site], inputs: dict[str, torch.Tensor], *,
            grad: bool = False) -> dict[Site, torch.Tensor]:
    """One forward; the value at each site in (batch, time, channels) layout (detached unless ``grad``)."""
    adapter, model = ctx.adapter, ctx.model
    w = wrapped(ctx)
    got: dict[Site, torch.Tensor] = {}
    with torch.set_grad_enabled(grad), w.trace(**place(inputs, model), use_cache=False):
        for s in in_forward_order(adapter, sites):
            x = read(w, adapter, s)
            got[s] = (x if grad else x.detach()).save()
    return got


def logits_with_delta(ctx: EditContext, inputs: dict[str, torch.Tensor], site: Site, positions: tuple[int, int],
                      delta: torch.Tensor, rank_one: tuple[torch.Tensor, torch.Tensor] | None = None,
                      mix: torch.Tensor | None = None) -> torch.Tensor:
    """The logits of one forward of ``inputs`` with ``delta`` (channels) added to the output of
    ``site`` (:func:`~lalm_interp.interventions.primitives.add`; differentiable in ``delta``).

    ``rank_one=None``: at time positions ``[a, b)`` (ROME's "value at the subject" form).
    ``rank_one=(k, u)``: at every position t, scaled by (uᵀx_t)/(uᵀk) with x_t the module's input —
    exactly what the rank-one update ΔW = δuᵀ/(uᵀk) will add, so the optimised loss is the loss
    the edited model has.
    ``mix=M`` ((n, in)) with ``delta`` of shape (n, channels): at every position t, add
    (M x_t)ᵀ delta — exactly what the multi-key update ΔW = deltaᵀ M will add
    (:func:`~lalm_interp.editors.rome.multi_key_update`, ``keys="frames"``).
    """
    adapter = ctx.adapter
    w = wrapped(ctx)
    with w.trace(**inputs, use_cache=False):
        if mix is None and rank_one is None:
            add(w, adapter, site, delta, positions)
        else:
            key = read(w, adapter, site.with_port("in")).double()  # (batch, time, in)
            dtype = read(w, adapter, site).dtype
            if mix is not None:
                change = ((key @ mix.T) @ delta.double()).to(dtype)  # (batch, time, channels)
            else:
                k, u = rank_one
                scale = (key @ u) / (k @ u)  # (batch, time)
                change = (scale[..., None] * delta.double()).to(dtype)
            add(w, adapter, site, change)
        logits = w.output.logits.save()
    return logits


def pooled(ctx: EditContext, prep: PreparedPrompt, site: Site, name: str) -> torch.Tensor:
    """Mean of ``site``'s value over span ``name`` of ``prep`` (float64, shape (channels,))."""
    a, b = span(ctx, prep, site, name)
    x = capture(ctx, [site], prep.inputs)[site]
    return x[0, a:b].double().mean(0)


def frames(ctx: EditContext, prep: PreparedPrompt, site: Site, name: str) -> torch.Tensor:
    """``site``'s value at every position of span ``name`` of ``prep`` (float64, shape (n, channels)):
    one row per encoder frame (audio sites) or LLM position (text sites) of the span."""
    a, b = span(ctx, prep, site, name)
    x = capture(ctx, [site], prep.inputs)[site]
    return x[0, a:b].double()


# ---------------------------------------------------------------------------- statistics
def corpus_keys(ctx: EditContext, site: Site) -> Iterator[np.ndarray]:
    """(n, d) batches of keys at ``site`` over ``ctx.corpus``: every valid encoder frame (audio
    sites) or every real LLM position (text sites). Clips longer than the encoder window are
    skipped (the model would truncate them)."""
    corpus = ctx.corpus
    if corpus is None or len(corpus.clips) == 0:
        raise EditorError(
            f"key statistics for {site} need a corpus: pass EditContext(corpus=KeyCorpus(id, clips)) "
            "(e.g. the protected corpus, lalm_interp.bench.corpus.protected_corpus)."
        )
    adapter = ctx.adapter
    stage = adapter.stage(site)
    window = window_samples(adapter)
    model_rate = adapter.rate_chain.sample_rate

    def keys_of(pending: list) -> np.ndarray:
        clips, rates = [a for a, _ in pending], [r for _, r in pending]
        batch = place(build_inputs(ctx.processor, adapter, clips, instruction=corpus.instruction,
                                   sample_rate=rates), ctx.model)
        x = capture(ctx, [site], batch.model_inputs)[site]
        rows = []
        for r in range(len(clips)):
            if stage == SEQ:
                rows.append(x[r, batch.model_inputs["attention_mask"][r].bool()])
            else:
                rows.append(x[r, : adapter.rate_chain.valid(stage, batch.n_mel[r])])
        return torch.cat(rows).double().cpu().numpy()

    pending: list = []
    used = 0
    for j in range(len(corpus.clips)):  # streamed: a 5,000-utterance corpus never sits in memory
        a, rate = corpus.audio(j), corpus.rate(j)
        if 0 < len(a) and len(a) * model_rate <= window * rate:  # fits the window once resampled
            pending.append((a, rate))
        if len(pending) == corpus.batch_size or (j == len(corpus.clips) - 1 and pending):
            used += len(pending)
            yield keys_of(pending)
            pending = []
    if used == 0:
        raise EditorError(f"key statistics for {site}: none of the {len(corpus.clips)} corpus clips fits the "
                          f"{window / adapter.rate_chain.sample_rate:.2f} s encoder window; use shorter utterances.")


def weights_digest(model: torch.nn.Module) -> str:
    """A cheap digest of every parameter's exact values (sha256 over each tensor's float64 sum and
    sum of squares, accumulated in chunks on the weights' device): any edit changes it, a bitwise
    revert restores it. Used to tell whether statistics are about to be computed on the weights a
    context's fingerprint names, on any model size (``weights_fingerprint`` hashes every byte only
    up to 50 M parameters)."""
    import hashlib

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            s = torch.zeros((), dtype=torch.float64, device=flat.device)
            q = torch.zeros((), dtype=torch.float64, device=flat.device)
            for a in range(0, flat.numel(), 1 << 24):
                c = flat[a:a + (1 << 24)].double()
                s += c.sum()
                q += (c * c).sum()
            h.update(f"{name}:{tuple(p.shape)}:{float(s).hex()}:{float(q).hex()}".encode())
    return h.hexdigest()[:16]


def stats_fingerprint(ctx: EditContext) -> str:
    """The fingerprint statistics computed *now* belong to: ``ctx.fingerprint`` while the weights
    are those the context's first statistics were fetched from (editors fetch every statistic they
    need before they edit, so that is the unedited model; a full-hash fingerprint is also checked
    against the weights at that first fetch), else ``<fingerprint>+edited:<digest>`` — statistics
    of edited weights are stored under a name of exactly those weights and never under the
    unedited model's (docs/editors/crossmodal.md#statistics)."""
    digest = weights_digest(ctx.model)
    ref = ctx.memo.get("weights_digest")
    if ref is None:
        if not _names_these_weights(ctx):
            return f"{ctx.fingerprint}+edited:{digest}"
        ref = ctx.memo["weights_digest"] = digest
    return ctx.fingerprint if digest == ref else f"{ctx.fingerprint}+edited:{digest}"


def _names_these_weights(ctx: EditContext) -> bool:
    """False when ``ctx.fingerprint`` is a full weights hash (``weights_fingerprint``, models up to
    50 M parameters) that the current weights no longer have — the model was edited after the
    context was made; True otherwise (a name given by the caller, or a large model, is trusted)."""
    import re

    if not re.fullmatch(r".*#[0-9a-f]{16}", ctx.fingerprint or ""):
        return True
    return weights_fingerprint(ctx.model) == ctx.fingerprint


def key_stats(ctx: EditContext, site: "Site | str"):
    """:class:`~lalm_interp.cache.SecondMoment` of the keys at ``site`` (``...mlp.down@in``) over the
    context's corpus: from memory, else from ``ctx.store`` (computed and written there on first use),
    always under the fingerprint of the weights they are computed from (:func:`stats_fingerprint`).
    Editors call this before they edit, so they get the unedited model's statistics."""
    s = parse(site).with_port("in")
    if ctx.corpus is None:
        corpus_keys(ctx, s)  # raises the explanatory error
    fp = stats_fingerprint(ctx)
    key = f"stats:{s}:{fp}"
    if key in ctx.memo:
        return ctx.memo[key]
    if fp != ctx.fingerprint:
        warnings.warn(f"key statistics at {s} are being computed on edited weights (stored under {fp!r}, not "
                      f"under the unedited model's {ctx.fingerprint!r}). Editors fetch their statistics before "
                      "editing; compute them on the unedited model first (docs/editors/crossmodal.md#statistics).",
                      EditorWarning, stacklevel=3)
    if ctx.store is not None:
        stats = ctx.store.key_stats(str(s), model=fp, corpus=ctx.corpus.id, compute=lambda: corpus_keys(ctx, s))
    else:
        stats = SecondMoment()
        for b in corpus_keys(ctx, s):
            stats.update(b)
    ctx.memo[key] = stats
    return stats


def second_moment(ctx: EditContext, site: "Site | str") -> torch.Tensor:
    """E[k kᵀ] of :func:`key_stats` as a float64 tensor on the model's device (where the weights
    it is combined with live)."""
    return torch.from_numpy(key_stats(ctx, site).second_moment).to(model_placement(ctx.model)[0])


# ---------------------------------------------------------------------------- value optimisation
@dataclass
class DeltaResult:
    """The optimised δ and its trace: ``nll`` per step (mean over target tokens), final
    ``p_new`` (P of target_new's tokens, product), ``v0_norm`` = ||v||, ``delta_norm``."""

    delta: torch.Tensor
    nll: list[float]
    p_new: float
    v0_norm: float
    delta_norm: float


def optimise_delta(ctx: EditContext, prep: PreparedPrompt, site: Site, name: str, *, steps: int, lr: float,
                   weight_decay: float, clamp_norm_factor: float, kl_factor: float = 0.0,
                   kl_preps: Sequence[tuple[PreparedPrompt, str]] = (), init: torch.Tensor | None = None,
                   stop_nll: float = 0.05, rank_one: tuple[torch.Tensor, torch.Tensor] | None = None,
                   mix: torch.Tensor | None = None, per_position: bool = False, wd_form: str = "squared",
                   kl_direction: str = "reverse") -> DeltaResult:
    """δ (channels of ``site``'s output) added over span ``name`` that maximises log P(target_new).

    loss = NLL(target_new | prompt, δ)  (mean over target tokens)
         + kl_factor · KL(P₀(· | kl prompt) ‖ P_δ(· | kl prompt))   (next token, δ at its span)
         + weight_decay · ‖δ‖² / ‖v‖²
    in the default forms; ``wd_form="rome"`` uses weight_decay · ‖δ‖ / ‖v‖² and
    ``kl_direction="rome"`` KL(P_δ ‖ P₀), as ROME's compute_v (:mod:`~lalm_interp.editors.losses`).
    with v the pooled output at the span; ‖δ‖ is clamped to ``clamp_norm_factor · ‖v‖`` after
    each Adam step. Stops early when the NLL falls below ``stop_nll``. ``rank_one=(k*, u)`` applies
    δ the way the rank-one update will (see :func:`logits_with_delta`) instead of over the span only.
    ``mix=M`` ((n, in), one row per key of the multi-key update) optimises one residual per key:
    δ has shape (n, channels) and acts as (M x_t)ᵀ δ at every position t, exactly as the multi-key
    update will; ‖v‖ is then the Frobenius norm of the span's values (n rows) and the clamp and
    weight decay use ‖δ‖_F. ``per_position=True`` (span form only) optimises one δ per position of
    the span (shape (b − a, channels), norms as with ``mix``); on ``kl_preps`` (other lengths)
    their mean is added over the prompt's span.
    """
    a, b = span(ctx, prep, site, name)
    model = ctx.model
    out0 = capture(ctx, [site], prep.inputs)[site]
    if per_position and (mix is not None or rank_one is not None):
        raise EditorError("optimise_delta: per_position=True is the span form; it takes no rank_one or mix.")
    rows = mix.shape[0] if mix is not None else (b - a if per_position else None)
    v0 = out0[0, a:b].float() if rows is not None else out0[0, a:b].float().mean(0)
    v0_norm = float(v0.norm())
    width = out0.shape[-1]
    shape = (rows, width) if rows is not None else (width,)
    delta = (init.detach().clone().float().expand(shape).clone() if init is not None
             else torch.zeros(shape)).to(out0.device)
    delta.requires_grad_(True)
    kl_ref = []
    for kp, kname in kl_preps:
        with torch.no_grad():
            lg = model(**kp.batch.model_inputs, use_cache=False).logits
        kl_ref.append(torch.log_softmax(lg[0, kp.batch.last[0]].float(), -1))
    opt = torch.optim.Adam([delta], lr=lr)
    max_norm = clamp_norm_factor * max(v0_norm, 1e-8)
    nlls: list[float] = []
    ids = [prep.new_ids]
    with frozen(model), torch.enable_grad():
        for step in range(max(steps, 0) + 1):
            logits = logits_with_delta(ctx, prep.inputs, site, (a, b), delta, rank_one, mix)
            _, total = logprobs_from_logits(logits, ids, prep.L)
            nll = -total[0] / len(prep.new_ids)
            nlls.append(float(nll.detach()))
            if step == steps or nlls[-1] < stop_nll:
                break
            loss = nll + weight_decay_term(delta, v0_norm, weight_decay, wd_form)
            for (kp, kname), ref in zip(kl_preps, kl_ref):
                ka, kb = span(ctx, kp, site, kname)
                kd = delta.mean(0) if per_position else delta
                lg = logits_with_delta(ctx, kp.batch.model_inputs, site, (ka, kb), kd, rank_one, mix)
                lp = torch.log_softmax(lg[0, kp.batch.last[0]].float(), -1)
                loss = loss + kl_factor / len(kl_preps) * kl_term(ref, lp, kl_direction)
            opt.zero_grad()
            loss.backward()
            if step == 0 and delta.grad is not None and not bool(delta.grad.any()):
                        warnings.warn(f"the value change at {site} (positions {a}:{b}) does not reach the target's "
                              "logits: its gradient is exactly 0, so this edit cannot change the prediction "
                              "(e.g. the last layer edited at positions before the last token). Pick an earlier "
                              "layer, or key_span='last_token'. Docs: docs/errors/editors.md",
                              EditorWarning, stacklevel=3)
            opt.step()
            with torch.no_grad():
                n = delta.norm()
                if n > max_norm:
                    delta.mul_(max_norm / n)
    d = delta.detach()
    return DeltaResult(d, nlls, float(np.exp(-nlls[-1] * len(prep.new_ids))), v0_norm, float(d.norm()))
