"""Shared fixtures: tiny random Qwen2-Audio models built from configs, the real 7B architecture on
the meta device, and deterministic test audio. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
QWEN2_AUDIO_7B = FIXTURES / "qwen2_audio_7b"


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    the CPUs are shared, and one thread is ~30x faster here than oversubscribed defaults; Ray
    actors with 1 CPU run torch on 1 thread too."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny():
    """(model, processor, adapter) of a tiny random Qwen2-Audio (2+2 layers, d=64, 4 s window)."""
    from lalm_interp import adapters
    from lalm_interp.models.tiny import tiny_qwen2_audio

    model, processor = tiny_qwen2_audio()
    return model, processor, adapters.for_model(model, processor)


@pytest.fixture(scope="session")
def tiny_deep():
    """A tiny random Qwen2-Audio with 6 audio and 6 text layers (for window/layer tests)."""
    from lalm_interp import adapters
    from lalm_interp.models.tiny import TinyConfig, tiny_qwen2_audio

    model, processor = tiny_qwen2_audio(TinyConfig(audio_layers=6, text_layers=6, seed=1))
    return model, processor, adapters.for_model(model, processor)


@pytest.fixture(scope="session")
def qwen7b_meta():
    """(model on the meta device, real processor, adapter) of Qwen2-Audio-7B-Instruct's architecture."""
    from transformers import AutoConfig, AutoProcessor, Qwen2AudioForConditionalGeneration

    from lalm_interp import adapters

    processor = AutoProcessor.from_pretrained(QWEN2_AUDIO_7B, local_files_only=True)
    config = AutoConfig.from_pretrained(QWEN2_AUDIO_7B, local_files_only=True)
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    return model, processor, adapters.for_model(model, processor)


def noise_clip(seconds: float, seed: int = 0, sr: int = 16000) -> np.ndarray:
    """Deterministic quiet noise (float32, mono) of the given length."""
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(round(seconds * sr)))).astype(np.float32)


@pytest.fixture
def clip():
    return noise_clip
