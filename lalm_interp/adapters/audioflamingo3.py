"""Adapter for ``AudioFlamingo3ForConditionalGeneration`` (transformers 5: parts under ``model.model``).

Audio stream: a Whisper-style encoder (AF-Whisper) with Qwen2-Audio's rates: ``conv1`` (k3 s1),
``conv2`` (k3 s2 p1) → 50 frames/s, layers, then ``avg_pooler`` (k2 s2) → 25 tokens/s and
``layer_norm``. The padding mask is ``input_features_mask`` (1 = real mel frame); only the tokens
of real audio are spliced over the ``<sound>`` ids. Projector ``linear_1 → act → linear_2`` on
(B, T, C). Text stream: a Qwen2 decoder. See ``docs/adapters/audioflamingo3.md``.
"""

from __future__ import annotations

from typing import Any

from .base import BCT, BTC, SEQ, TUPLE0, AdapterSpec, Component, placeholder_slots
from .qwen2_audio import qwen2_audio_rate_chain

A = "model.audio_tower"
T = "model.language_model"
AD = "audio_config.d_model"
TD = "text_config.hidden_size"


def af3_prompt(processor: Any, instruction: str, style: str) -> str:
    """The processor's chat template with one audio item (``chat``), or ``<sound>{instruction}``
    (``plain``); the processor expands ``<sound>`` to the clip's token count."""
    if style == "chat":
        messages = [
            {"role": "user", "content": [{"type": "audio", "audio": "<clip>"}, {"type": "text", "text": instruction}]}
        ]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return f"{getattr(processor, 'audio_token', '<sound>')}{instruction}"


ADAPTER = AdapterSpec(
    name="audioflamingo3",
    model_types=("audioflamingo3",),
    hf_class="transformers:AudioFlamingo3ForConditionalGeneration",
    layer_counts={"audio": "audio_config.encoder_layers", "text": "text_config.num_hidden_layers"},
    sites={
        "text.embed": Component(f"{T}.embed_tokens", TD, stage=SEQ),
        "audio.conv1": Component(f"{A}.conv1", AD, layout=BCT, stage="mel"),
        "audio.conv2": Component(f"{A}.conv2", AD, layout=BCT, stage="encoder"),
        "audio.layers.{i}.attn": Component(f"{A}.layers.{{i}}.self_attn", AD, out=TUPLE0, stage="encoder"),
        "audio.layers.{i}.mlp.down": Component(
            f"{A}.layers.{{i}}.fc2", AD, stage="encoder", in_dim="audio_config.encoder_ffn_dim"
        ),
        "audio.layers.{i}.mlp": Component(f"{A}.layers.{{i}}.fc2", AD, stage="encoder"),
        "audio.layers.{i}.resid": Component(f"{A}.layers.{{i}}", AD, stage="encoder", in_dim=AD),
        "audio.pool": Component(f"{A}.avg_pooler", AD, layout=BCT, stage="token"),
        "audio.norm": Component(f"{A}.layer_norm", AD, layout=BTC, stage="token"),
        "proj": Component("model.multi_modal_projector", TD, stage="token"),
        "text.layers.{i}.attn": Component(f"{T}.layers.{{i}}.self_attn", TD, out=TUPLE0),
        "text.layers.{i}.mlp.down": Component(
            f"{T}.layers.{{i}}.mlp.down_proj", TD, in_dim="text_config.intermediate_size"
        ),
        "text.layers.{i}.mlp": Component(f"{T}.layers.{{i}}.mlp", TD),
        "text.layers.{i}.resid": Component(f"{T}.layers.{{i}}", TD, in_dim=TD),
        "text.norm": Component(f"{T}.norm", TD),
        "text.logits": Component("lm_head", "text_config.vocab_size"),
    },
    rate_chain=qwen2_audio_rate_chain,
    build_prompt=af3_prompt,
    audio_slots=placeholder_slots,
    audio_token_attr="audio_token_id",
    feature_mask_key="input_features_mask",
)
