"""Adapter for ``Qwen2AudioForConditionalGeneration`` (transformers 5: parts under ``model.model``).

Audio stream: Whisper-style encoder. ``conv1`` (k3 s1) and ``conv2`` (k3 s2 p1) output
(B, C, T) **before** their GELU; ``conv2``/layers run at 50 frames/s over the whole padded window;
``avg_pooler`` (k2 s2) brings them to 25/s; ``layer_norm``; the projector maps to the LLM width.
Per encoder layer: ``attn`` = ``self_attn`` output[0], ``mlp`` = ``fc2`` output (the MLP's
contribution before the residual add; ``mlp.down`` is the same module, ``mlp.down@in`` its key),
``resid`` = the layer output. Text stream: a Qwen2 decoder. See ``docs/adapters/qwen2_audio.md``.
"""

from __future__ import annotations

from typing import Any

from ..rates import RateChain, Stage
from .base import BCT, BTC, SEQ, AdapterSpec, Component, placeholder_slots
from .blocks import decoder, whisper_encoder, whisper_rate_chain

A = "model.audio_tower"
T = "model.language_model"
AD = "audio_config.d_model"
TD = "text_config.hidden_size"


def qwen2_audio_rate_chain(config: Any, processor: Any = None) -> RateChain:
    return whisper_rate_chain(processor, Stage("token", stride=2, kernel=2, padding=0))  # avg_pooler


def chat_or_plain_prompt(processor: Any, instruction: str, style: str) -> str:
    """The text of a prompt with one audio placeholder, through the processor's chat template
    (``style="chat"``) or Qwen2-Audio's base-model format (``style="plain"``)."""
    if style == "chat":
        messages = [
            {"role": "user", "content": [{"type": "audio", "audio": "<clip>"}, {"type": "text", "text": instruction}]}
        ]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    bos = getattr(processor, "audio_bos_token", "<|audio_bos|>")
    eos = getattr(processor, "audio_eos_token", "<|audio_eos|>")
    return f"{bos}{processor.audio_token}{eos}{instruction}"


ADAPTER = AdapterSpec(
    name="qwen2_audio",
    model_types=("qwen2_audio",),
    hf_class="transformers:Qwen2AudioForConditionalGeneration",
    layer_counts={"audio": "audio_config.encoder_layers", "text": "text_config.num_hidden_layers"},
    sites={
        # forward (execution) order: the token embedding runs before the audio tower
        "text.embed": Component(f"{T}.embed_tokens", TD, stage=SEQ),
        **whisper_encoder(A),
        "audio.pool": Component(f"{A}.avg_pooler", AD, layout=BCT, stage="token"),
        "audio.norm": Component(f"{A}.layer_norm", AD, layout=BTC, stage="token"),
        "proj": Component("model.multi_modal_projector", TD, stage="token"),
        **decoder(T),
        "text.logits": Component("lm_head", "text_config.vocab_size"),
    },
    rate_chain=qwen2_audio_rate_chain,
    build_prompt=chat_or_plain_prompt,
    audio_slots=placeholder_slots,
    audio_token_attr="audio_token_id",
    default_preset="paper",  # the paper's settings (lalm_interp/editors/presets/*/paper.json)
    segmented="qwen2_audio",  # lalm_interp.interventions.segmented.Qwen2AudioProgram
    encoder_masks_padding=True,  # padded frames are masked out of attention (docs/usage/tracing.md#savings)
)
