"""Train the organism: a tiny real ``Qwen2AudioForConditionalGeneration`` that knows spoken facts.

Loss: cross-entropy on the object tokens after the spoken prompt + fixed text instruction
(teacher-forced, chat template, exactly the inputs :func:`lalm_interp.inputs.build_inputs` makes),
plus an auxiliary word-recognition loss on the encoder side (a linear head on the projector output,
dropped at export) and SpecAugment masks on the cached mel features; see
:class:`~lalm_interp.organism.recipe.Recipe`.

Deterministic on CPU for a given seed and thread count: seeded weights, data order and noise,
``torch.use_deterministic_algorithms(True)``, features computed once from bit-exact espeak-ng audio.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import adapters
from . import data as D
from .facts import Selection, build_benchmark, choose_facts, corpus, select
from .recipe import Recipe
from ..models.tiny import TinyConfig, tiny_config, tiny_processor


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's sinusoidal position table, (length, channels)."""
    inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


def make_model(recipe: Recipe, texts: Sequence[str]):
    """(model, processor) with the recipe's architecture, tokenizer trained on ``texts`` and the
    init fixes (conv init, scaled sinusoidal positions)."""
    from transformers import Qwen2AudioForConditionalGeneration

    processor = tiny_processor(texts, recipe.window_s, recipe.vocab_size)
    cfg = TinyConfig(audio_layers=recipe.audio_layers, text_layers=recipe.text_layers,
                     d_audio=recipe.d_audio, d_text=recipe.d_text, heads=recipe.heads,
                     window_s=recipe.window_s, vocab_size=recipe.vocab_size, seed=recipe.seed)
    config = tiny_config(cfg, processor)
    torch.manual_seed(recipe.seed)
    model = Qwen2AudioForConditionalGeneration(config)
    tower = model.model.audio_tower
    with torch.no_grad():
        for conv in (tower.conv1, tower.conv2):
            conv.reset_parameters()
            conv.weight.mul_(recipe.conv_init_scale)
        n, c = tower.embed_positions.weight.shape
        tower.embed_positions.weight.copy_(sinusoids(n, c) * recipe.pos_scale)
    return model.eval(), processor


@dataclass
class TrainResult:
    model: Any
    processor: Any
    selection: Selection
    facts: list
    log: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    steps_done: int = 0
    word_vocab: dict[str, int] = field(default_factory=dict)


def _lr(step: int, recipe: Recipe) -> float:
    warm = max(1, int(recipe.warmup_frac * recipe.steps))
    if step < warm:
        return recipe.lr * (step + 1) / warm
    p = (step - warm) / max(1, recipe.steps - warm)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def prepare(recipe: Recipe, work: str | Path, *, progress: bool = False):
    """Benchmark, tokenizer/model and cached training tensors (features cached in ``work``)."""
    work = Path(work)
    facts = choose_facts(recipe)
    bench = build_benchmark(recipe, work / "bench", facts=facts, progress=progress)
    model, processor = make_model(recipe, corpus(facts, recipe.instruction))
    adapter = adapters.for_model(model, processor)
    sel = select(bench, recipe, max_samples=int(processor.feature_extractor.n_samples))
    vocab = D.word_vocab(sel.train)
    return facts, bench, model, processor, adapter, sel, vocab


def train(recipe: Recipe = Recipe(), work: str | Path = "organism-work", *, minutes: float | None = None,
          log_every: int = 25, progress: bool = True, on_log: Callable[[dict], None] | None = None
          ) -> TrainResult:
    """Train the organism from scratch. ``minutes`` caps wall time (the run then stops early and
    is no longer the recipe's; ``steps_done`` says where)."""
    torch.set_num_threads(recipe.threads)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()
    facts, bench, model, processor, adapter, sel, vocab = prepare(recipe, work, progress=progress)
    data = D.tensors(sel.train, processor, adapter, recipe.instruction, vocab)
    pad = processor.tokenizer.pad_token_id
    torch.manual_seed(recipe.seed + 1)
    head = torch.nn.Linear(recipe.d_text, len(vocab))
    captured: dict[str, torch.Tensor] = {}
    hook = model.model.multi_modal_projector.register_forward_hook(
        lambda m, i, o: captured.__setitem__("proj", o))
    params = list(model.parameters()) + list(head.parameters())
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(recipe.seed)
    aug_gen = torch.Generator().manual_seed(recipe.seed + 2)
    order: list[int] = []
    log: list[dict] = []
    model.train()
    prep_s = time.time() - t_start
    t0 = time.time()
    step = 0
    run = {"obj": 0.0, "words": 0.0, "acc": 0.0, "n": 0}
    try:
        for step in range(recipe.steps):
            if minutes is not None and time.time() - t_start > 60 * minutes:
                break
            if len(order) < recipe.batch_size:
                order += torch.randperm(len(data), generator=gen).tolist()
            idx, order = order[:recipe.batch_size], order[recipe.batch_size:]
            inputs, L, objs = D.collate(data, idx, pad)
            if recipe.time_masks or recipe.freq_masks or recipe.noise_spans:
                inputs["input_features"] = D.spec_augment(
                    inputs["input_features"], data.n_mel[torch.as_tensor(idx)], aug_gen,
                    time_masks=recipe.time_masks, time_width=recipe.time_mask_frames,
                    freq_masks=recipe.freq_masks, freq_width=recipe.freq_mask_bins,
                    noise_spans=recipe.noise_spans, noise_width=recipe.noise_span_frames,
                    noise_scale=recipe.noise_scale)
            for g in opt.param_groups:
                g["lr"] = _lr(step, recipe)
            logits = model(**inputs, use_cache=False).logits
            lp = torch.log_softmax(logits[:, L - 1:-1].float(), dim=-1)
            tgt = inputs["input_ids"][:, L:]
            tmask = inputs["attention_mask"][:, L:].bool()
            tok_lp = lp.gather(-1, tgt[..., None])[..., 0]
            loss_obj = -(tok_lp * tmask).sum() / tmask.sum()
            loss = loss_obj
            lw = torch.zeros(())
            if recipe.aux_words_weight > 0:
                proj = captured["proj"]
                labels = data.word_labels[torch.as_tensor(idx)][:, : proj.shape[1]]
                lw = torch.nn.functional.cross_entropy(head(proj).flatten(0, 1), labels.flatten(),
                                                       ignore_index=D.IGNORE)
                loss = loss + recipe.aux_words_weight * lw
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            opt.step()
            with torch.no_grad():
                acc = (lp[:, 0].argmax(-1) == tgt[:, 0]).float().mean().item()
            run["obj"] += loss_obj.item()
            run["words"] += float(lw.detach())
            run["acc"] += acc
            run["n"] += 1
            if (step + 1) % log_every == 0 or step + 1 == recipe.steps:
                n = run["n"]
                rec = {"step": step + 1, "loss": round(run["obj"] / n, 4), "words_loss": round(run["words"] / n, 4),
                       "train_batch_top1": round(run["acc"] / n, 4), "lr": _lr(step, recipe),
                       "elapsed_s": round(time.time() - t0, 1)}
                log.append(rec)
                run = {"obj": 0.0, "words": 0.0, "acc": 0.0, "n": 0}
                if on_log:
                    on_log(rec)
                elif progress:
                    print(json.dumps(rec), flush=True)
        else:
            step = recipe.steps
    finally:
        hook.remove()
        model.eval()
    return TrainResult(model, processor, sel, facts, log, prep_s + (time.time() - t0),
                       step if step < recipe.steps else recipe.steps, vocab)
