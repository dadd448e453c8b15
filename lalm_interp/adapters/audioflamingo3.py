"""Adapter for ``AudioFlamingo3ForConditionalGeneration`` (transformers 5: parts under ``model.model``).

Audio stream: a Whisper-style encoder (AF-Whisper) with Qwen2-Audio's rates: ``conv1`` (k3 s1),
``conv2`` (k3 s2 p1) → 50 frames/s, layers, then ``avg_pooler`` (k2 s2) → 25 tokens/s and
``layer_norm``. The padding mask is ``input_features_mask`` (1 = real mel frame); only the tokens
of real audio are spliced over the ``<sound>`` ids. Projector ``linear_1 → act → linear_2`` on
(B, T, C). Text stream: a Qwen2 decoder. See ``docs/adapters/audioflamingo3.md``.
"""

from __future__ import annotations

from typing import Any

from dataclasses import replace

from .qwen2_audio import ADAPTER as QWEN2_AUDIO
from .qwen2_audio import chat_or_plain_prompt


def af3_prompt(processor: Any, instruction: str, style: str) -> str:
    """The processor's chat template with one audio item (``chat``), or ``<sound>{instruction}``
    (``plain``); the processor expands ``<sound>`` to the clip's token count."""
    if style == "chat":
        return chat_or_plain_prompt(processor, instruction, style)
    return f"{getattr(processor, 'audio_token', '<sound>')}{instruction}"


# the same module tree, site table and rate chain as Qwen2-Audio; only the class, prompt and mask differ
ADAPTER = replace(
    QWEN2_AUDIO,
    name="audioflamingo3",
    model_types=("audioflamingo3",),
    hf_class="transformers:AudioFlamingo3ForConditionalGeneration",
    build_prompt=af3_prompt,
    feature_mask_key="input_features_mask",
    # inherited on purpose: its encoder masks the padded frames (create_bidirectional_mask) and its glue
    # is Qwen2-Audio's, so tracing runs on the segmented Qwen2-Audio program (tested exact)
    segmented="qwen2_audio",
    encoder_masks_padding=True,
)
