"""Tiny random-weight Voxtral and AudioFlamingo3 models built from configs, with offline processors.

* AudioFlamingo3: the real ``AudioFlamingo3Processor`` (a ``WhisperFeatureExtractor`` + a tiny BPE
  tokenizer with ``<sound>`` and a Qwen-style chat template) — the same input path as the 8B model.
* Voxtral: the real ``VoxtralProcessor`` needs ``mistral_common`` (its tokenizer is Tekken, not a
  Hugging Face tokenizer) and is not installed here, so :class:`MinimalAudioProcessor` stands in:
  a ``WhisperFeatureExtractor`` padded to the encoder window, a tiny BPE tokenizer with Voxtral's
  ``[INST]``/``[BEGIN_AUDIO]``/``[AUDIO]`` tokens, and placeholder expansion to the *full window's*
  token count (Voxtral splices every 4-frame group of the padded window, as mistral_common does).
  The model inputs it returns are exactly what ``VoxtralForConditionalGeneration`` takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .tiny import DEFAULT_CORPUS, text_config
from .tokenizer import train_bpe

VOXTRAL_TOKENS = ("[INST]", "[/INST]", "[BEGIN_AUDIO]", "[AUDIO]")
AF3_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'audio' %}<sound>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyOtherConfig:
    """Dimensions of a tiny Voxtral / AudioFlamingo3.

    audio_layers / text_layers: encoder / decoder depth. d_audio / d_text: widths (ffn 2x).
    heads: attention heads (text: heads // 2 key-value heads). window_s: encoder window in seconds
    (``max_source_positions = 50 * window_s``). vocab_size: BPE size. seed: weight seed.
    """

    audio_layers: int = 2
    text_layers: int = 2
    d_audio: int = 32
    d_text: int = 48
    heads: int = 4
    window_s: int = 4
    vocab_size: int = 400
    seed: int = 0


def _feature_extractor(window_s: int):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400, chunk_length=window_s
    )


def _tokenizer(texts: Iterable[str] | None, vocab_size: int, extra: Sequence[str]):
    tok = train_bpe(texts if texts is not None else [DEFAULT_CORPUS], vocab_size=vocab_size)
    tok.add_tokens(list(extra), special_tokens=True)
    return tok


class MinimalAudioProcessor:
    """A stand-in for a processor that cannot be built offline: features padded to the encoder
    window, the prompt's one ``audio_token`` expanded to ``n_audio_tokens`` ids, text tokenized with
    left padding. Returns ``input_ids``, ``attention_mask`` and ``input_features`` only (no mel mask).
    """

    def __init__(self, feature_extractor: Any, tokenizer: Any, audio_token: str, n_audio_tokens: int):
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.audio_token = audio_token
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        self.n_audio_tokens = int(n_audio_tokens)
        self.chat_template = None

    def __call__(self, text: Sequence[str], audio: Sequence[np.ndarray], sampling_rate: int = 16000,
                 return_tensors: str = "pt", **_: Any) -> dict[str, torch.Tensor]:
        if isinstance(text, str):
            text = [text]
        for t in text:
            if t.count(self.audio_token) != 1:
                raise ValueError(f"prompt {t!r} must hold exactly one {self.audio_token!r}.")
        feats = self.feature_extractor(
            list(audio), sampling_rate=sampling_rate, return_tensors="pt", padding="max_length"
        )["input_features"]
        expanded = [t.replace(self.audio_token, self.audio_token * self.n_audio_tokens) for t in text]
        enc = self.tokenizer(expanded, return_tensors="pt", padding=True, add_special_tokens=False)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "input_features": feats}


def tiny_voxtral(cfg: TinyOtherConfig = TinyOtherConfig(), texts: Iterable[str] | None = None):
    """(model, processor) of a tiny random ``VoxtralForConditionalGeneration`` (eval, float32, CPU)."""
    from transformers import VoxtralConfig, VoxtralForConditionalGeneration

    tok = _tokenizer(texts, cfg.vocab_size, VOXTRAL_TOKENS)
    msp = 50 * cfg.window_s
    config = VoxtralConfig(
        audio_config=dict(
            hidden_size=cfg.d_audio,
            intermediate_size=4 * cfg.d_audio,  # = the projector input: 4 frames concatenated
            num_hidden_layers=cfg.audio_layers,
            num_attention_heads=cfg.heads,
            num_mel_bins=128,
            max_source_positions=msp,
        ),
        text_config=dict(text_config(cfg, tok), head_dim=cfg.d_text // cfg.heads),
        audio_token_id=tok.convert_tokens_to_ids("[AUDIO]"),
    )
    processor = MinimalAudioProcessor(_feature_extractor(cfg.window_s), tok, "[AUDIO]", msp // 4)
    torch.manual_seed(cfg.seed)
    model = VoxtralForConditionalGeneration(config).eval()
    return model, processor


def tiny_audioflamingo3(cfg: TinyOtherConfig = TinyOtherConfig(), texts: Iterable[str] | None = None):
    """(model, processor) of a tiny random ``AudioFlamingo3ForConditionalGeneration`` with the real
    ``AudioFlamingo3Processor`` (eval, float32, CPU)."""
    from transformers import (
        AudioFlamingo3Config,
        AudioFlamingo3ForConditionalGeneration,
        AudioFlamingo3Processor,
    )

    tok = _tokenizer(texts, cfg.vocab_size, ("<sound>",))
    processor = AudioFlamingo3Processor(
        feature_extractor=_feature_extractor(cfg.window_s), tokenizer=tok, chat_template=AF3_CHAT_TEMPLATE,
        max_audio_len=cfg.window_s,
    )
    config = AudioFlamingo3Config(
        audio_config=dict(
            hidden_size=cfg.d_audio,
            intermediate_size=2 * cfg.d_audio,
            num_hidden_layers=cfg.audio_layers,
            num_attention_heads=cfg.heads,
            num_mel_bins=128,
            max_source_positions=50 * cfg.window_s,
        ),
        text_config=text_config(cfg, tok),
        audio_token_id=tok.convert_tokens_to_ids("<sound>"),
    )
    torch.manual_seed(cfg.seed)
    model = AudioFlamingo3ForConditionalGeneration(config).eval()
    return model, processor
