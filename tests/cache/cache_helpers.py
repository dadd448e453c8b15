"""Deterministic batches for cache tests (also imported by the writer subprocess script)."""

from __future__ import annotations

import numpy as np

from lalm_interp.cache import Batch, Positions, Provenance

N_LAYERS = 4
HIDDEN = 8
AUDIO_HIDDEN = 6


def provenance(**kw) -> Provenance:
    base = dict(model="tiny/qwen2-audio", revision="r1", dataset="capitals", n_layers={"text": N_LAYERS, "audio": 2})
    base.update(kw)
    return Provenance(**base)


def make_batch(index: int, n_examples: int = 3, hidden: int = HIDDEN, layers=range(N_LAYERS), prefix: str = "ex") -> Batch:
    """Shard ``index``: text positions vary per shard (padding on concat), audio has time_s."""
    rng = np.random.default_rng(1000 + index)
    n_pos = 4 + index % 3
    values = {f"text.layers.{l}.mlp": rng.standard_normal((n_examples, n_pos, hidden)).astype(np.float32) for l in layers}
    values["audio.layers.1.mlp.down@in"] = rng.standard_normal((n_examples, 5, AUDIO_HIDDEN)).astype(np.float16)
    tokens = np.array([[f"tok{index}_{e}_{p}" for p in range(n_pos)] for e in range(n_examples)])
    subject = np.zeros((n_examples, n_pos), dtype=bool)
    subject[:, 1] = True
    valid = np.ones((n_examples, n_pos), dtype=bool)
    valid[0, -1] = False
    return Batch(
        examples=[f"{prefix}{index:03d}_{e}" for e in range(n_examples)],
        values=values,
        positions={
            "text": Positions(token=tokens, is_subject=subject, valid=valid),
            "audio": Positions(time_s=np.arange(5) * 0.04, word=np.array([["the", "the", "", "cat", "cat"]] * n_examples)),
        },
    )
