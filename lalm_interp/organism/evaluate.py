"""Evaluate the organism: top-1 accuracy by group, and the subject-corruption effect.

Accuracy groups (see :class:`~lalm_interp.organism.facts.Selection`): edit prompts and
neighbourhood prompts in the training renditions, paraphrases (held out), and edit /
neighbourhood prompts in each held-out voice.

Corruption (ROME's causal-trace noise, at the audio encoder's ``conv2``): Gaussian noise of scale
``3σ`` (σ: std of the clean conv2 activations over the subject frames of the scored clips) is added
to the conv2 output over a span of encoder frames, with the intervention engine's
:func:`~lalm_interp.interventions.primitives.corrupt` inside one nnsight trace. We compare the
subject span with an equally long span of non-subject words and report P(true object) and the
probability mass left on the relation's objects (the first tokens of every object the model learned
for that relation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..inputs import DEFAULT_INSTRUCTION, PromptBatch, build_inputs, place
from ..interventions.primitives import corrupt, read
from ..known import first_token_scores
from ..scoring import object_prefix, object_token_ids
from ..spans import position_map
from ..wrap import wrap


def accuracy(model, processor, adapter, items: Sequence[Any], *, instruction: str = DEFAULT_INSTRUCTION,
             batch_size: int = 32) -> dict[str, Any]:
    """``{"top1": fraction correct, "n": count, "p_true": mean P(first object token)}``."""
    if not items:
        return {"top1": None, "n": 0, "p_true": None}
    s = first_token_scores(model, processor, adapter, list(items), instruction=instruction, batch_size=batch_size)
    return {"top1": round(sum(s.correct) / len(s.correct), 4), "n": len(s.correct),
            "p_true": round(sum(s.p_true) / len(s.p_true), 4)}


def evaluate_groups(model, processor, adapter, groups: dict[str, Sequence[Any]], *,
                    instruction: str = DEFAULT_INSTRUCTION, batch_size: int = 32) -> dict[str, Any]:
    """Accuracy of every group; held-out groups are also split per rendition."""
    out: dict[str, Any] = {}
    for name, items in groups.items():
        out[name] = accuracy(model, processor, adapter, items, instruction=instruction, batch_size=batch_size)
        if name.startswith("heldout"):
            by_r: dict[str, list] = {}
            for it in items:
                by_r.setdefault(str(it.rendition), []).append(it)
            if len(by_r) > 1:
                out[name]["per_rendition"] = {
                    r: accuracy(model, processor, adapter, v, instruction=instruction, batch_size=batch_size)["top1"]
                    for r, v in sorted(by_r.items())}
    return out


# ---------------------------------------------------------------------------- corruption


def relation_first_tokens(items: Sequence[Any], tokenizer: Any, prefix: str = "",
                          relation_of: dict[str, str] | None = None) -> dict[str, set[int]]:
    """Relation key → first token ids of every object seen with it in ``items``. An item's relation
    key is ``relation_of[item.fact_id]`` (its fact id when ``relation_of`` lacks it)."""
    rel: dict[str, set[int]] = {}
    for it in items:
        key = (relation_of or {}).get(it.fact_id, it.fact_id)
        rel.setdefault(key, set()).add(object_token_ids(tokenizer, it.target_true, prefix)[0])
    return rel


def non_subject_span(subject: tuple[int, int], n_valid: int) -> tuple[int, int] | None:
    """An encoder-frame span as long as ``subject`` that does not overlap it: right after the
    subject when it fits in the valid frames, else right before, else ``None``."""
    a, b = subject
    n = b - a
    if b + n <= n_valid:
        return (b, b + n)
    if a - n >= 0:
        return (a - n, a)
    return None


@dataclass
class CorruptionResult:
    """Mean over items of P(true object's first token) and of the mass on the relation's objects,
    clean and with 3σ noise over the subject frames / an equally long non-subject span."""

    n: int
    sigma: float
    p_clean: float
    p_subject: float
    p_other: float
    rel_clean: float
    rel_subject: float
    rel_other: float
    top1_in_relation_other: float
    top1_in_relation_subject: float

    def to_json(self) -> dict[str, float]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _next_token_logprobs(model: Any, w: Any, adapter: Any, batch: PromptBatch, site: Any,
                         corrupt_rows: Sequence[tuple[int, tuple[int, int], torch.Tensor]] = (), *,
                         scale: float = 1.0, sigma: float = 1.0,
                         keep: list | None = None) -> torch.Tensor:
    """log-softmax of the logits at each example's last prompt position (as
    :func:`~lalm_interp.scoring.next_token_logprobs`), in one trace of ``w = wrap(model)`` where each
    ``(row, (t0, t1), z)`` of ``corrupt_rows`` adds (scale·sigma)·z over frames t0:t1 of ``site`` in
    that row; ``keep`` (a list) receives the clean value at ``site`` ((batch, time, channels))."""
    with w.trace(**place(batch.model_inputs, model), use_cache=False):
        if keep is not None:
            keep.append(read(w, adapter, site).clone().save())
        for b, span, z in corrupt_rows:
            corrupt(w, adapter, site, span, z, rows=b, scale=scale, sigma=sigma)
        logits = w.output.logits.save()
    rows = torch.arange(len(batch))
    return torch.log_softmax(logits[rows, torch.as_tensor(batch.last)].float(), dim=-1).cpu()


@torch.no_grad()
def corruption_effect(model, processor, adapter, items: Sequence[Any], relation_tokens: dict[str, set[int]],
                      relation_of: dict[str, str], *, scale: float = 3.0, seed: int = 0,
                      instruction: str = DEFAULT_INSTRUCTION, at: str = "audio.conv2") -> CorruptionResult:
    """Corrupt the site ``at`` (default conv2) over the subject frames, and over an equally long
    non-subject span, of the ``items`` (edit prompts with a subject word range) in one batch each;
    see the module docstring."""
    items = [it for it in items if it.subject_word_range is not None]
    batch = build_inputs(processor, adapter, [it.audio for it in items],
                         sample_rate=[it.sample_rate for it in items], instruction=instruction)
    pre = object_prefix(adapter, batch)
    tok = processor.tokenizer
    true_ids = torch.as_tensor([object_token_ids(tok, it.target_true, pre)[0] for it in items])
    site = adapter.one(at)
    stage = adapter.stage(site)
    subj, other = [], []
    for b, it in enumerate(items):
        pm = position_map(adapter, batch, b, it.words, it.subject_word_range)
        s = pm.span("subject", stage)
        subj.append(s)
        o = non_subject_span(s, pm.n_frames(stage))
        other.append(o if o is not None else (0, 0))
    w = wrap(model)
    cap: list[torch.Tensor] = []
    lp_clean = _next_token_logprobs(model, w, adapter, batch, site, keep=cap)
    channels_first = adapter.dims(site)[1] == "hidden"  # σ over the values in the module's own order
    acts = torch.cat([(cap[0][b, a:c].T if channels_first else cap[0][b, a:c]).flatten()
                      for b, (a, c) in enumerate(subj)])
    sigma = float(acts.std())
    gen = torch.Generator().manual_seed(seed)
    C = cap[0].shape[-1]

    def run(spans):
        draws = [torch.randn(C, t1 - t0, generator=gen) for (t0, t1) in spans]  # channels × frames
        rows = [(b, (t0, t1), z.T) for b, ((t0, t1), z) in enumerate(zip(spans, draws)) if t1 > t0]
        return _next_token_logprobs(model, w, adapter, batch, site, rows, scale=scale, sigma=sigma)

    lp_subj = run(subj)
    lp_other = run(other)
    keep = [b for b, o in enumerate(other) if o[1] > o[0]]

    def p_true(lp, rows):
        return float(lp.exp()[rows, true_ids[rows]].mean())

    def rel_mass(lp, rows):
        p = lp.exp()
        vals = [float(p[b, sorted(relation_tokens[relation_of[items[b].fact_id]])].sum()) for b in rows]
        return sum(vals) / len(vals)

    def top_in_rel(lp, rows):
        top = lp.argmax(-1)
        return sum(int(top[b]) in relation_tokens[relation_of[items[b].fact_id]] for b in rows) / len(rows)

    allr = list(range(len(items)))
    return CorruptionResult(
        n=len(items), sigma=sigma,
        p_clean=p_true(lp_clean, allr), p_subject=p_true(lp_subj, allr), p_other=p_true(lp_other, keep),
        rel_clean=rel_mass(lp_clean, allr), rel_subject=rel_mass(lp_subj, allr), rel_other=rel_mass(lp_other, keep),
        top1_in_relation_other=top_in_rel(lp_other, keep), top1_in_relation_subject=top_in_rel(lp_subj, allr))
