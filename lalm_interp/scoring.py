"""Object scoring: how likely is an object string after a spoken prompt?

Two measures, both in natural-log probability:

* ``first``: log P(first object token | prompt) — what ROME's causal tracing measures;
* ``total``: teacher-forced log P(all object tokens | prompt) — right for multi-token objects.

The object's leading space follows the prompt style: after a chat template's assistant header the
answer starts a line (no space); in the plain continuation format it follows a word (one space).
The adapter declares this (``AdapterSpec.object_prefix``); pass ``prefix=`` to override.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float

from .errors import ScoringError
from .inputs import PromptBatch, place


@dataclass
class ObjectScores:
    """Scores of one object per example.

    first: log P(first object token) per example.
    total: teacher-forced log P(object tokens) per example (sum over tokens).
    token_ids: the object's token ids per example.
    """

    first: Float[torch.Tensor, "batch"]
    total: Float[torch.Tensor, "batch"]
    token_ids: list[list[int]]

    @property
    def p_first(self) -> Float[torch.Tensor, "batch"]:
        return self.first.exp()


def object_prefix(adapter: Any, batch: PromptBatch, prefix: str | None = None) -> str:
    if prefix is not None:
        return prefix
    return adapter.spec.object_prefix.get(batch.style, "")


def object_token_ids(tokenizer: Any, obj: str, prefix: str = "") -> list[int]:
    """Token ids of ``prefix + obj`` without special tokens; a clear error if nothing is left."""
    if not isinstance(obj, str) or not obj.strip():
        raise ScoringError(f"object {obj!r} is empty; an object must be a non-empty string like 'Paris'.")
    ids = tokenizer(prefix + obj.strip(), add_special_tokens=False)["input_ids"]
    if len(ids) == 0:
        raise ScoringError(f"object {obj!r} tokenizes to nothing with this tokenizer; pick another object string.")
    return list(ids)


def _forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**place(inputs, model), use_cache=False).logits


@torch.no_grad()
def next_token_logprobs(model: torch.nn.Module, batch: PromptBatch) -> Float[torch.Tensor, "batch vocab"]:
    """log-softmax of the logits at each example's last prompt position."""
    logits = _forward(model, batch.model_inputs)
    rows = torch.arange(len(batch))
    return torch.log_softmax(logits[rows, torch.as_tensor(batch.last)].float(), dim=-1).cpu()


def teacher_forced_inputs(
    batch: PromptBatch, token_ids: Sequence[Sequence[int]], pad_id: int
) -> tuple[dict[str, torch.Tensor], int]:
    """Append each example's object tokens after its (left-padded) prompt; returns inputs and the
    prompt length ``L`` (the logits at ``L - 1 + k`` predict object token ``k``)."""
    mi = batch.model_inputs
    ids, mask, pos = mi["input_ids"], mi["attention_mask"], mi["position_ids"]
    B, L = ids.shape
    M = max(len(t) for t in token_ids)
    add = torch.full((B, M), pad_id, dtype=ids.dtype)
    add_mask = torch.zeros((B, M), dtype=mask.dtype)
    for b, t in enumerate(token_ids):
        add[b, : len(t)] = torch.as_tensor(t, dtype=ids.dtype)
        add_mask[b, : len(t)] = 1
    add_pos = pos[:, -1:] + torch.arange(1, M + 1, dtype=pos.dtype, device=pos.device)[None, :]
    out = dict(mi)
    out["input_ids"] = torch.cat([ids, add.to(ids.device)], dim=1)
    out["attention_mask"] = torch.cat([mask, add_mask.to(mask.device)], dim=1)
    out["position_ids"] = torch.cat([pos, add_pos.to(pos.device)], dim=1)
    return out, L


def logprobs_from_logits(
    logits: torch.Tensor, token_ids: Sequence[Sequence[int]], L: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(first-token, total) log-probs from teacher-forced logits (differentiable)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    first, total = [], []
    for b, t in enumerate(token_ids):
        k = torch.arange(len(t), device=lp.device)
        tok = torch.as_tensor(t, device=lp.device)
        per = lp[b, L - 1 + k, tok]
        first.append(per[0])
        total.append(per.sum())
    return torch.stack(first), torch.stack(total)


def score_objects(
    model: torch.nn.Module,
    adapter: Any,
    batch: PromptBatch,
    objects: Sequence[str],
    *,
    tokenizer: Any = None,
    prefix: str | None = None,
) -> ObjectScores:
    """Score ``objects[b]`` after prompt ``b`` in one teacher-forced forward pass."""
    if len(objects) != len(batch):
        raise ScoringError(f"{len(objects)} objects for {len(batch)} prompts; give one object per prompt.")
    tokenizer = tokenizer or adapter.processor.tokenizer
    pre = object_prefix(adapter, batch, prefix)
    token_ids = [object_token_ids(tokenizer, o, pre) for o in objects]
    inputs, L = teacher_forced_inputs(batch, token_ids, tokenizer.pad_token_id or 0)
    with torch.no_grad():
        logits = _forward(model, inputs)
    first, total = logprobs_from_logits(logits, token_ids, L)
    return ObjectScores(first.cpu(), total.cpu(), token_ids)
