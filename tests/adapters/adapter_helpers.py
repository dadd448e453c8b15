"""Shared pieces of the adapter tests: word timings, test audio, tiny model builders."""

from __future__ import annotations

import numpy as np

from lalm_interp.spans import Word

WORDS = tuple(Word(*w) for w in (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270),
                                  ("capital", 1.270, 1.785), ("is", 1.785, 1.943)))
SUBJECT = (0, 1)
ADAPTER_NAMES = ("qwen2_audio", "voxtral", "audioflamingo3", "salmonn")


def audio(seed: int = 0, seconds: float = 1.95) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)


def build(name: str):
    from lalm_interp import adapters

    if name == "qwen2_audio":
        from lalm_interp.models.tiny import tiny_qwen2_audio

        model, proc = tiny_qwen2_audio()
    elif name == "voxtral":
        from lalm_interp.models.tiny_others import tiny_voxtral

        model, proc = tiny_voxtral()
    elif name == "audioflamingo3":
        from lalm_interp.models.tiny_others import tiny_audioflamingo3

        model, proc = tiny_audioflamingo3()
    else:
        from lalm_interp.models.salmonn import tiny_salmonn

        model, proc = tiny_salmonn()
    return model, proc, adapters.for_model(model, proc)
