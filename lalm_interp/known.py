"""Model-side known-fact scorer for :func:`lalm_interp.bench.select.filter_known`.

A fact is *known* (paper's criterion) when the model's top-1 next token after the spoken prompt is
the first token of ``target_true``. :func:`first_token_scores` scores benchmark items in batches
through the same input path as every other tool (:func:`lalm_interp.inputs.build_inputs`);
:func:`known_scorer` wraps it as the ``BatchScorer`` that ``filter_known`` takes::

    from lalm_interp import load
    from lalm_interp.bench import Benchmark
    from lalm_interp.bench.select import filter_known
    from lalm_interp.known import known_scorer

    model, processor, adapter = load("organism")
    known = filter_known(Benchmark.open("bench"), known_scorer(model, processor, adapter))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .errors import ScoringError
from .inputs import DEFAULT_INSTRUCTION, build_inputs
from .scoring import next_token_logprobs, object_prefix, object_token_ids


@dataclass
class FirstTokenScores:
    """Per item: whether the top-1 token is the object's first token, P(first token), the top-1 id,
    the object's first token id, and (optionally) the full next-token log-probs."""

    correct: list[bool]
    p_true: list[float]
    top1: list[int]
    true_id: list[int]
    logprobs: torch.Tensor | None = None


def _target(item: Any, target: str) -> str:
    obj = getattr(item, target, None)
    if not obj:
        raise ScoringError(f"item {getattr(item, 'item_id', item)!r} has no {target!r}; known-fact scoring "
                           "needs an object string there (target_true for benchmark items; pass "
                           "target='target_new' only for items that have one).")
    return obj


def _rate_of(item: Any) -> int | None:
    """The item's own rate; ``None`` (refused by ``build_inputs``) when it states none."""
    return getattr(item, "sample_rate", None)


@torch.no_grad()
def first_token_scores(model: torch.nn.Module, processor: Any, adapter: Any, items: Sequence[Any], *,
                       instruction: str = DEFAULT_INSTRUCTION, target: str = "target_true",
                       batch_size: int = 32, keep_logprobs: bool = False,
                       forward: Callable[[Any], torch.Tensor] | None = None) -> FirstTokenScores:
    """Top-1 correctness of the object's first token for benchmark ``items`` (anything with
    ``.audio``, ``.sample_rate`` and ``.target_true``: benchmark items, ``SpokenPrompt`` s),
    ``batch_size`` items per forward pass. An item without ``.sample_rate`` raises
    :class:`~lalm_interp.errors.AudioInputError` (its audio's rate is never guessed).

    forward: optional ``batch → next-token log-probs`` (default :func:`next_token_logprobs`), e.g.
        to score under an intervention.
    """
    tok = processor.tokenizer
    out = FirstTokenScores([], [], [], [])
    kept = []
    for i in range(0, len(items), batch_size):
        part = items[i:i + batch_size]
        batch = build_inputs(processor, adapter, [it.audio for it in part], sample_rate=[_rate_of(it) for it in part],
                             instruction=instruction)
        pre = object_prefix(adapter, batch)
        ids = [object_token_ids(tok, _target(it, target), pre)[0] for it in part]
        lp = forward(batch) if forward is not None else next_token_logprobs(model, batch)
        top = lp.argmax(-1)
        t = torch.as_tensor(ids)
        out.correct += (top == t).tolist()
        out.p_true += lp.gather(-1, t[:, None])[:, 0].exp().tolist()
        out.top1 += top.tolist()
        out.true_id += ids
        if keep_logprobs:
            kept.append(lp)
    if keep_logprobs and kept:
        out.logprobs = torch.cat(kept)
    return out


def known_scorer(model: torch.nn.Module, processor: Any, adapter: Any, *,
                 instruction: str = DEFAULT_INSTRUCTION, batch_size: int = 32) -> Callable[[Sequence[Any]], list[bool]]:
    """A ``BatchScorer`` (``items → [bool]``) for :func:`lalm_interp.bench.select.filter_known`."""

    def scorer(items: Sequence[Any]) -> list[bool]:
        return first_token_scores(model, processor, adapter, list(items), instruction=instruction,
                                  batch_size=batch_size).correct

    return scorer
