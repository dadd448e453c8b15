"""Training tensors for the organism: mel features computed once, prompt ids, object ids and
per-audio-token word labels, plus the collate function that mirrors :func:`lalm_interp.inputs.build_inputs`
(left padding, position ids, object tokens appended for teacher forcing)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..bench.store import Item
from ..inputs import build_inputs
from ..scoring import object_prefix, object_token_ids

IGNORE = -100


def norm_word(w: str) -> str:
    """Lower-case a spoken word and strip punctuation (``"Beirut?"`` → ``"beirut"``)."""
    return re.sub(r"[^\w']", "", w.lower()).strip("'") or w.lower()


@dataclass
class ClipTensors:
    """Cached inputs for N clips.

    features: (N, 128, 2 * max_source_positions) mel features.
    n_mel: (N,) real mel frames.
    prompt_ids: N token-id lists of the rendered prompt (audio placeholder already expanded).
    object_ids: N token-id lists of the object (chat style: no leading space).
    word_labels: (N, n_tokens) word-vocabulary id of the word spoken at each LLM audio token
        (``-100`` for silence and padding).
    """

    features: torch.Tensor
    n_mel: torch.Tensor
    prompt_ids: list[list[int]]
    object_ids: list[list[int]]
    word_labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompt_ids)


def word_vocab(items: Sequence[Item]) -> dict[str, int]:
    words = sorted({norm_word(w.word) for it in items for w in it.words})
    return {w: i for i, w in enumerate(words)}


def tensors(items: Sequence[Item], processor: Any, adapter: Any, instruction: str,
            vocab: dict[str, int] | None = None, chunk: int = 64) -> ClipTensors:
    """Compute features and ids for ``items`` through the same path as evaluation."""
    feats, n_mel, pids, oids, labels = [], [], [], [], []
    chain = adapter.rate_chain
    n_tok_full = chain.valid("token", 2 * int(adapter.config.audio_config.max_source_positions))
    tok = processor.tokenizer
    for i in range(0, len(items), chunk):
        part = items[i:i + chunk]
        batch = build_inputs(processor, adapter, [it.audio for it in part],
                             sample_rate=[it.sample_rate for it in part], instruction=instruction)
        pre = object_prefix(adapter, batch)
        mi = batch.model_inputs
        feats.append(mi["input_features"].to(torch.float32))
        n_mel += batch.n_mel
        for b, it in enumerate(part):
            row = mi["input_ids"][b][mi["attention_mask"][b].bool()]
            pids.append(row.tolist())
            oids.append(object_token_ids(tok, it.target_true, pre))
            lab = torch.full((n_tok_full,), IGNORE, dtype=torch.long)
            if vocab is not None:
                fps = chain.frames_per_second("token")
                for j in range(batch.n_audio[b]):
                    c = (j + 0.5) / fps
                    for w in it.words:
                        if w.start_s is not None and w.start_s <= c < w.end_s:
                            lab[j] = vocab.get(norm_word(w.word), IGNORE)
                            break
            labels.append(lab)
    return ClipTensors(torch.cat(feats), torch.tensor(n_mel), pids, oids, torch.stack(labels))


def collate(data: ClipTensors, idx: Sequence[int], pad_id: int) -> tuple[dict[str, torch.Tensor], int, list[list[int]]]:
    """Model inputs for rows ``idx``: left-padded prompts + appended object tokens.

    Returns (inputs, L, object ids): the logits at ``L - 1 + k`` predict object token ``k``.
    """
    prompts = [data.prompt_ids[i] for i in idx]
    objs = [data.object_ids[i] for i in idx]
    B = len(idx)
    L = max(len(p) for p in prompts)
    M = max(len(o) for o in objs)
    ids = torch.full((B, L + M), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L + M), dtype=torch.long)
    for b, (p, o) in enumerate(zip(prompts, objs)):
        ids[b, L - len(p):L] = torch.tensor(p)
        mask[b, L - len(p):L] = 1
        ids[b, L:L + len(o)] = torch.tensor(o)
        mask[b, L:L + len(o)] = 1
    pos = (mask[:, :L].cumsum(-1) - 1).clamp(min=0)
    pos = torch.cat([pos, pos[:, -1:] + torch.arange(1, M + 1)[None, :]], dim=1)
    t = torch.as_tensor(list(idx))
    n_mel = data.n_mel[t]
    T = data.features.shape[-1]
    fam = (torch.arange(T)[None, :] < n_mel[:, None]).long()
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": pos,
              "input_features": data.features[t], "feature_attention_mask": fam}
    return inputs, L, objs


def spec_augment(features: torch.Tensor, n_mel: torch.Tensor, gen: torch.Generator, *, time_masks: int,
                 time_width: int, freq_masks: int, freq_width: int, noise_spans: int = 0,
                 noise_width: int = 0, noise_scale: float = 0.0) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) on a batch of log-mel features (B, n_mels, T): ``time_masks``
    spans of 0..``time_width`` real frames and ``freq_masks`` bands of 0..``freq_width`` bins,
    each set to the clip's mean over its real frames; then ``noise_spans`` bursts of 0..``noise_width``
    frames of added Gaussian noise, std = U(0, ``noise_scale``) x the clip's feature std. Draws only
    from ``gen`` (reproducible)."""
    x = features.clone()
    B, F, _ = x.shape
    for b in range(B):
        n = int(n_mel[b])
        fill = x[b, :, :n].mean()
        for _ in range(time_masks):
            w = int(torch.randint(0, time_width + 1, (), generator=gen))
            t0 = int(torch.randint(0, max(1, n - w), (), generator=gen))
            x[b, :, t0:t0 + w] = fill
        for _ in range(freq_masks):
            w = int(torch.randint(0, freq_width + 1, (), generator=gen))
            f0 = int(torch.randint(0, max(1, F - w), (), generator=gen))
            x[b, f0:f0 + w, :n] = fill
        if noise_spans:
            sd = features[b, :, :n].std()
            for _ in range(noise_spans):
                w = int(torch.randint(0, noise_width + 1, (), generator=gen))
                t0 = int(torch.randint(0, max(1, n - w), (), generator=gen))
                s = float(torch.rand((), generator=gen)) * noise_scale * sd
                x[b, :, t0:t0 + w] += s * torch.randn(F, min(w, n - t0), generator=gen)
    return x
