"""Adapter for ``VoxtralForConditionalGeneration`` (transformers 5: parts under ``model.model``).

Audio stream: a Whisper-style encoder with **no padding mask** — it always runs the whole padded
window (``2 * max_source_positions`` mel frames). ``conv1`` (k3 s1) and ``conv2`` (k3 s2 p1) output
(B, C, T) before their GELU; layers run at 50 frames/s; ``layer_norm`` closes the encoder. Then
``get_audio_features`` reshapes the (B, T, C) output to (B·T/4, 4C) — **4 consecutive encoder frames
concatenated per LLM token** (12.5 tokens/s) — and the projector ``linear_1 → act → linear_2``
maps each group to the LLM width. Every group of the padded window is spliced in (375 per 30 s), so
the LLM audio positions cover padding too; the valid ones are the groups holding real frames.
The projector's input and output are 2-D (batch·tokens, channels): the ``proj`` site has layout
``windows`` and is read as (batch, tokens, channels). Text stream: a Llama decoder.
See ``docs/adapters/voxtral.md``.
"""

from __future__ import annotations

from typing import Any

from ..rates import RateChain, Stage
from .base import SEQ, WINDOWS, AdapterSpec, Component, config_get, placeholder_slots
from .blocks import decoder, whisper_encoder, whisper_rate_chain

A = "model.audio_tower"
T = "model.language_model"
AD = "audio_config.d_model"
TD = "text_config.hidden_size"
GROUP = 4  # encoder frames per LLM token


def tokens_per_window(config: Any) -> int:
    """LLM audio positions per padded window: ``max_source_positions // 4`` (375 for 30 s)."""
    return int(config_get(config, "audio_config.max_source_positions")) // GROUP


def voxtral_rate_chain(config: Any, processor: Any = None) -> RateChain:
    return whisper_rate_chain(
        processor,
        Stage("token", stride=GROUP, kernel=GROUP, partial=True),  # 4-frame concatenation
        window_mel=2 * int(config_get(config, "audio_config.max_source_positions")),
    )


def voxtral_prompt(processor: Any, instruction: str, style: str) -> str:
    """Voxtral's instruct format ``[INST][BEGIN_AUDIO][AUDIO]{instruction}[/INST]`` (``chat``) or the
    continuation format ``[BEGIN_AUDIO][AUDIO]{instruction}`` (``plain``), one ``[AUDIO]`` that the
    processor expands to the window's token count."""
    audio = getattr(processor, "audio_token", "[AUDIO]")
    if style == "chat":
        return f"[INST][BEGIN_AUDIO]{audio}{instruction}[/INST]"
    return f"[BEGIN_AUDIO]{audio}{instruction}"


ADAPTER = AdapterSpec(
    name="voxtral",
    model_types=("voxtral",),
    hf_class="transformers:VoxtralForConditionalGeneration",
    layer_counts={"audio": "audio_config.encoder_layers", "text": "text_config.num_hidden_layers"},
    sites={
        "text.embed": Component(f"{T}.embed_tokens", TD, stage=SEQ),
        **whisper_encoder(A),
        "audio.norm": Component(f"{A}.layer_norm", AD, stage="encoder"),
        "proj": Component(
            "model.multi_modal_projector", TD, layout=WINDOWS, stage="token", windows=tokens_per_window,
            in_dim="audio_config.intermediate_size",
        ),
        **decoder(T),
        "text.logits": Component("lm_head", "text_config.vocab_size"),
    },
    rate_chain=voxtral_rate_chain,
    build_prompt=voxtral_prompt,
    audio_slots=placeholder_slots,
    audio_token_attr="audio_token_id",
    feature_mask_key=None,
    audio_positions="window",
)
