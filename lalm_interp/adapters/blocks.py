"""Site tables of the building blocks LALMs share, so an adapter lists only what is its own.

* :func:`whisper_encoder` — a Whisper-style encoder: ``conv1``/``conv2`` (channels first, before
  their GELU), and per layer ``attn`` (``self_attn`` output[0]), ``mlp`` = ``mlp.down`` (``fc2``, its
  input is the ROME key) and ``resid`` (the layer output).
* :func:`decoder` — a Llama/Qwen2-style decoder: per layer ``attn``, ``mlp``, ``mlp.down``
  (``down_proj``), ``resid``, then the final ``norm``.
* :func:`whisper_rate_chain` — Whisper's front end (mel at ``sample_rate / hop``, conv2 stride 2)
  followed by the model's own LLM-token stage.
"""

from __future__ import annotations

from typing import Any

from ..rates import RateChain, Stage
from .base import BCT, TUPLE0, Component


def whisper_encoder(prefix: str, *, stream: str = "audio", dim: str = "audio_config.d_model",
                    ffn: str = "audio_config.encoder_ffn_dim") -> dict[str, Component]:
    """Sites of a Whisper-style encoder whose modules live under ``prefix``, in forward order."""
    return {
        f"{stream}.conv1": Component(f"{prefix}.conv1", dim, layout=BCT, stage="mel"),
        f"{stream}.conv2": Component(f"{prefix}.conv2", dim, layout=BCT, stage="encoder"),
        **encoder_layers(f"{prefix}.layers", stream=f"{stream}.layers", dim=dim, ffn=ffn),
    }


def encoder_layers(prefix: str, *, stream: str = "audio.layers", dim: str = "audio_config.d_model",
                   ffn: str = "audio_config.encoder_ffn_dim") -> dict[str, Component]:
    """Per-layer sites of a Whisper-style layer stack under ``prefix`` (``prefix.{i}``)."""
    return {
        f"{stream}.{{i}}.attn": Component(f"{prefix}.{{i}}.self_attn", dim, out=TUPLE0, stage="encoder"),
        f"{stream}.{{i}}.mlp.down": Component(f"{prefix}.{{i}}.fc2", dim, stage="encoder", in_dim=ffn),
        f"{stream}.{{i}}.mlp": Component(f"{prefix}.{{i}}.fc2", dim, stage="encoder"),
        f"{stream}.{{i}}.resid": Component(f"{prefix}.{{i}}", dim, stage="encoder", in_dim=dim),
    }


def decoder(prefix: str, *, dim: str = "text_config.hidden_size",
            ffn: str = "text_config.intermediate_size") -> dict[str, Component]:
    """Sites of a Llama/Qwen2-style decoder whose ``layers`` and ``norm`` live under ``prefix``."""
    return {
        "text.layers.{i}.attn": Component(f"{prefix}.layers.{{i}}.self_attn", dim, out=TUPLE0),
        "text.layers.{i}.mlp.down": Component(f"{prefix}.layers.{{i}}.mlp.down_proj", dim, in_dim=ffn),
        "text.layers.{i}.mlp": Component(f"{prefix}.layers.{{i}}.mlp", dim),
        "text.layers.{i}.resid": Component(f"{prefix}.layers.{{i}}", dim, in_dim=dim),
        "text.norm": Component(f"{prefix}.norm", dim),
    }


def whisper_rate_chain(processor: Any, token: Stage, *, window_mel: int | None = None) -> RateChain:
    """mel (the processor's rate, default 16 kHz / hop 160) → conv2 (k3 s2 p1) → ``token``."""
    fe = getattr(processor, "feature_extractor", None)
    return RateChain(
        sample_rate=int(getattr(fe, "sampling_rate", 16000)),
        hop=int(getattr(fe, "hop_length", 160)),
        stages=(Stage("mel"), Stage("encoder", stride=2, kernel=3, padding=1), token),  # conv2
        window_mel=window_mel,
    )
