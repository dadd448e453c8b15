"""Adapter for SALMONN-style models (``lalm_interp.models.salmonn.SalmonnForCausalLM``, whose module
names follow SALMONN's code: ``speech_encoder``, ``ln_speech``, ``beats``, ``ln_audio``,
``speech_Qformer``, ``speech_query_tokens``, ``speech_llama_proj``, ``llama_model`` under LoRA).

Streams and sites (full table and limits in ``docs/adapters/salmonn.md``):

* ``audio``: the Whisper encoder is *the* layered audio stack — ``audio.conv1``, ``audio.conv2``,
  ``audio.layers.N.{attn,mlp,mlp.down,resid}``, ``audio.norm`` (Whisper's final LayerNorm) and
  ``audio.ln_speech``. The BEATs encoder is a second stack in the same stream, addressed through a
  component path: ``audio.beats_conv`` (its patch-embedding conv front end),
  ``audio.beats.layers.N.{attn,mlp,mlp.down,resid}`` (matched by ``audio.beats.layers.*.resid``,
  not by ranges; not usable in ``Restore``) and ``audio.beats_norm`` (``ln_audio``).
* ``proj``: the window-level Q-Former — ``proj.layers.N.{attn,mlp,mlp.down,resid}`` (``attn`` is
  the *cross*-attention to the window's encoder frames: with one query per window, self-attention
  is a fixed map of the query) — and ``proj`` (``speech_llama_proj``). Q-Former values are
  (batch·windows, 1, C) and read as (batch, windows, C) (layout ``windows``).
* ``text``: the LLaMA decoder inside LoRA (``llama_model.base_model.model.model``).

Rates: mel 100/s → encoder 50/s (conv2) → ``token`` = one Q-Former window of 17 encoder frames
(0.34 s, stride 17) per LLM position; every window of the padded input is spliced in (88 for 30 s).
No placeholder token: the audio positions lie between the ``<Speech>`` and ``</Speech>`` marker ids.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import AdapterError
from ..rates import RateChain, Stage
from .base import BCT, SEQ, WINDOWS, AdapterSpec, Component, config_get
from .blocks import decoder, encoder_layers, whisper_encoder, whisper_rate_chain
from ..models.salmonn import speech_span

W = "speech_encoder"
BE = "beats"
Q = "speech_Qformer.bert.encoder.layer"
L = "llama_model.base_model.model"
T = f"{L}.model"
AD = "audio_config.d_model"
BD = "beats_config.d_model"
QD = "qformer_config.hidden_size"
TD = "text_config.hidden_size"
PROMPT = "USER: <Speech><SpeechHere></Speech> {instruction}\nASSISTANT:"


def salmonn_rate_chain(config: Any, processor: Any = None) -> RateChain:
    k, s = int(config.window_frames), int(config.stride_frames)
    if k != s:
        raise AdapterError(
            f"salmonn adapter: Q-Former window {k} != stride {s} encoder frames; overlapping windows do not "
            "map onto a strided rate chain. Use window == stride (SALMONN's default, 17)."
        )
    return whisper_rate_chain(
        processor,
        Stage("token", stride=s, kernel=k, partial=True),  # Q-Former windows
        window_mel=2 * int(config_get(config, "audio_config.max_source_positions")),
    )


def salmonn_prompt(processor: Any, instruction: str, style: str) -> str:
    """SALMONN's Vicuna prompt (both styles): ``USER: <Speech><SpeechHere></Speech> {instr}\\nASSISTANT:``."""
    return PROMPT.format(instruction=instruction)


def salmonn_slots(input_ids_row: torch.Tensor, config: Any) -> tuple[int, int]:
    """Audio positions between the ``<Speech>`` and ``</Speech>`` marker ids."""
    try:
        return speech_span(input_ids_row, config.speech_open_ids, config.speech_close_ids)
    except ValueError as err:
        raise AdapterError(f"salmonn: {err} Build inputs with lalm_interp.inputs and the SALMONN processor.") from err


def n_windows(config: Any) -> int:
    return int(config.n_windows)


def _qformer(module: str, dim: str, **kw: Any) -> Component:
    return Component(module, dim, layout=WINDOWS, stage="token", windows=n_windows, **kw)


ADAPTER = AdapterSpec(
    name="salmonn",
    model_types=("salmonn",),
    hf_class="lalm_interp.models.salmonn:SalmonnForCausalLM",
    layer_counts={
        "audio": "audio_config.encoder_layers",
        "audio.beats": "beats_config.encoder_layers",
        "proj": "qformer_config.num_hidden_layers",
        "text": "text_config.num_hidden_layers",
    },
    sites={
        # forward order: SALMONN encodes speech (Whisper, then BEATs), then embeds the prompt text
        **whisper_encoder(W),
        "audio.norm": Component(f"{W}.layer_norm", AD, stage="encoder"),
        "audio.ln_speech": Component("ln_speech", AD, stage="encoder"),
        "audio.beats_conv": Component(f"{BE}.patch_embedding", BD, layout=BCT, stage="encoder"),
        **encoder_layers(f"{BE}.encoder.layers", stream="audio.beats.layers", dim=BD, ffn="beats_config.encoder_ffn_dim"),
        "audio.beats_norm": Component("ln_audio", BD, stage="encoder"),
        "proj.layers.{i}.attn": _qformer(f"{Q}.{{i}}.crossattention", QD),
        "proj.layers.{i}.mlp.down": _qformer(f"{Q}.{{i}}.output_query.dense", QD,
                                             in_dim="qformer_config.intermediate_size"),
        "proj.layers.{i}.mlp": _qformer(f"{Q}.{{i}}.output_query.dense", QD),
        "proj.layers.{i}.resid": _qformer(f"{Q}.{{i}}", QD, in_dim=QD),
        "proj": _qformer("speech_llama_proj", TD),
        "text.embed": Component(f"{T}.embed_tokens", TD, stage=SEQ),
        **decoder(T),
        "text.logits": Component(f"{L}.lm_head", "text_config.vocab_size"),
    },
    rate_chain=salmonn_rate_chain,
    build_prompt=salmonn_prompt,
    audio_slots=salmonn_slots,
    audio_token_attr=None,
    llm_input=(T, "inputs_embeds"),
    object_prefix={"chat": " ", "plain": " "},
    feature_mask_key=None,
    audio_positions="window",
)
