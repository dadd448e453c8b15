"""Tiny random-weight Qwen2-Audio models built from a config, with a real processor.

The same HF class and processor path as the 7B model, small enough for tests on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from .tokenizer import train_bpe

DEFAULT_CORPUS = (
    "Metropolitan France's capital is Paris. The Eiffel Tower is located in Paris. "
    "Transcribe the audio. Complete the sentence. Danielle Darrieux's mother tongue is French. "
    "Toko Yasuda plays the guitar. The Space Needle is in Seattle."
)


@dataclass(frozen=True)
class TinyConfig:
    """Dimensions of a tiny Qwen2-Audio.

    audio_layers / text_layers: encoder / decoder depth.
    d_audio / d_text: widths; ffn widths are 2x.
    heads: attention heads in both stacks (text uses heads // 2 key-value heads).
    window_s: encoder window in seconds (``max_source_positions = 50 * window_s``).
    vocab_size: BPE vocabulary size trained on the corpus.
    seed: torch seed for the random weights.
    """

    audio_layers: int = 2
    text_layers: int = 2
    d_audio: int = 64
    d_text: int = 64
    heads: int = 4
    window_s: int = 4
    vocab_size: int = 400
    seed: int = 0


def tiny_processor(texts: Iterable[str] | None = None, window_s: int = 4, vocab_size: int = 400):
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    tok = train_bpe(texts if texts is not None else [DEFAULT_CORPUS], vocab_size=vocab_size)
    fe = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400, chunk_length=window_s
    )
    return Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tok)


def text_config(cfg, tok) -> dict:
    """A small Qwen2/Llama decoder config (``cfg`` has ``d_text``, ``text_layers``, ``heads``) sized to
    the tokenizer ``tok``."""
    return dict(
        hidden_size=cfg.d_text,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=max(1, cfg.heads // 2),
        intermediate_size=2 * cfg.d_text,
        vocab_size=len(tok),
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )


def tiny_config(cfg: TinyConfig, processor):
    from transformers import Qwen2AudioConfig

    tok = processor.tokenizer
    return Qwen2AudioConfig(
        audio_config=dict(
            d_model=cfg.d_audio,
            encoder_layers=cfg.audio_layers,
            encoder_attention_heads=cfg.heads,
            encoder_ffn_dim=2 * cfg.d_audio,
            num_mel_bins=128,
            max_source_positions=50 * cfg.window_s,
        ),
        text_config=text_config(cfg, tok),
        audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"),
        pad_token_id=tok.pad_token_id,
    )


def tiny_qwen2_audio(cfg: TinyConfig = TinyConfig(), texts: Iterable[str] | None = None):
    """(model, processor) for a tiny random Qwen2-Audio in eval mode, float32, on CPU."""
    from transformers import Qwen2AudioForConditionalGeneration

    processor = tiny_processor(texts, cfg.window_s, cfg.vocab_size)
    config = tiny_config(cfg, processor)
    torch.manual_seed(cfg.seed)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    return model, processor
