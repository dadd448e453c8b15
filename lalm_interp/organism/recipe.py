"""The organism's recipe: every knob of data, architecture and training, with its default and unit.

A :class:`Recipe` is plain data; ``Recipe.to_json()`` is recorded in the shipped manifest, so the
checkpoint says exactly what produced it. See ``docs/organism.md`` for the measured results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of the organism (a tiny Qwen2-Audio trained on spoken CounterFact facts).

    Data
        n_subjects: CounterFact subjects taken from the shipped subset (all their facts, 3–6 each,
            plus each fact's neighbourhood prompt with its true object). Default 40.
        train_renditions: espeak-ng renditions the model hears in training (male and female
            variants, several rates). Default: 3 renditions (two male, one
            female; 165-190 words per minute).
        heldout_renditions: renditions never heard in training (held-out voices). Default: British
            RP male (a voice never trained) and two unheard female variants.
        train_paraphrases: also train on paraphrase prompts (default False: paraphrases are held
            out and only reported).
        instruction: the fixed text instruction after the audio. Default "Complete the sentence.".
    Architecture (the real ``Qwen2AudioForConditionalGeneration``)
        audio_layers / text_layers: encoder / decoder depth. Default 6 / 6.
        d_audio / d_text: widths (ffn 2x). Default 64 / 64.
        heads: attention heads (text: heads // 2 key-value heads). Default 4.
        window_s: encoder window in seconds (``max_source_positions = 50 * window_s``, the feature
            extractor's ``chunk_length``). Clips longer than this are dropped and recorded. Default 3.
        vocab_size: byte-level BPE vocabulary trained on the fact corpus. Default 1600.
        conv_init_scale: conv1/conv2 get PyTorch's default Conv1d init times this (HF's N(0, 0.02)
            leaves conv features far below the position embeddings at this width). Default 2.0.
        pos_scale: the encoder's position table is set to Whisper's sinusoids times this. Default 0.2.
    Training
        seed: seeds weights, data order and noise. Default 0.
        steps: optimiser steps. Default 1600.
        batch_size: clips per step. Default 16.
        lr: peak learning rate of the one-cycle schedule (AdamW). Default 4e-3.
        warmup_frac: fraction of steps spent warming up (linear), then cosine to 0. Default 0.05.
        weight_decay: AdamW weight decay. Default 0.01.
        grad_clip: global gradient-norm clip. Default 1.0.
        aux_words_weight: weight of the auxiliary word-recognition loss: a linear head (dropped at
            export) classifies, at each LLM audio token, the spoken word (timings from espeak-ng)
            from the projector output. Default 1.0. 0 disables it.
        time_masks / time_mask_frames: SpecAugment time masks per training clip and their maximum
            width in mel frames (10 ms each). Default 2 / 20. 0 masks disables.
        freq_masks / freq_mask_bins: SpecAugment frequency masks and their maximum width in mel
            bins (of 128). Default 2 / 16.
        noise_spans / noise_span_frames / noise_scale: bursts of additive Gaussian noise per training
            clip, their maximum width in mel frames and maximum std in units of the clip's feature
            std (drawn uniformly). Default 1 / 50 (0.5 s) / 3.0. 0 spans disables.
        threads: torch CPU threads. Default 1: on a shared 2-core machine two OpenMP threads per
            process stalled each other (measured 20 s vs 2 s per step under load); results are
            bitwise reproducible for a fixed thread count.
    """

    n_subjects: int = 40
    train_renditions: tuple[str, ...] = (
        "en-us:r175:p50",
        "en-us+f2:r165:p60",
        "en+m3:r190:p50",
    )
    heldout_renditions: tuple[str, ...] = ("en-gb-x-rp+m2:r175:p40", "en+f4:r170:p55", "en-us+f5:r180:p50")
    train_paraphrases: bool = False
    instruction: str = "Complete the sentence."
    audio_layers: int = 6
    text_layers: int = 6
    d_audio: int = 64
    d_text: int = 64
    heads: int = 4
    window_s: int = 3
    vocab_size: int = 1000
    conv_init_scale: float = 2.0
    pos_scale: float = 0.2
    seed: int = 0
    steps: int = 1600
    batch_size: int = 16
    lr: float = 4e-3
    warmup_frac: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    aux_words_weight: float = 1.0
    time_masks: int = 2
    time_mask_frames: int = 20
    freq_masks: int = 2
    freq_mask_bins: int = 16
    noise_spans: int = 1
    noise_span_frames: int = 50
    noise_scale: float = 3.0
    threads: int = 1

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Recipe":
        names = {f.name for f in fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)

    def replace(self, **kw: Any) -> "Recipe":
        from dataclasses import replace

        return replace(self, **kw)
