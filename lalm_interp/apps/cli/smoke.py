"""``lalm-interp smoke``: a self-check on a tiny random Qwen2-Audio (no downloads, ~10 s).

Builds the model from a config, runs a spoken-prompt-shaped input through an nnsight trace with no
intervention, checks it equals the plain HF forward, and prints where every canonical site sits.
"""

from __future__ import annotations


def run(args) -> int:
    import numpy as np
    import torch

    from lalm_interp import adapters
    from lalm_interp.inputs import build_inputs
    from lalm_interp.models.tiny import tiny_qwen2_audio
    from lalm_interp.scoring import score_objects
    from lalm_interp.wrap import wrap

    model, processor = tiny_qwen2_audio()
    a = adapters.for_model(model, processor)
    audio = (0.1 * np.random.default_rng(0).standard_normal(int(16000 * 2.0))).astype(np.float32)
    batch = build_inputs(processor, a, [audio], sample_rate=16000)
    with torch.no_grad():
        ref = model(**batch.model_inputs, use_cache=False).logits
        w = wrap(model)
        with w.trace(**batch.model_inputs, use_cache=False):
            out = w.output.save()
    same = torch.equal(out.logits, ref)
    print(f"{a!r}: {len(a.all_sites())} sites; 2.0 s clip -> {batch.n_mel[0]} mel frames -> "
          f"{batch.n_audio[0]} audio tokens at positions {batch.audio_start[0]}..{batch.audio_start[0] + batch.n_audio[0] - 1}")
    print(f"no-op nnsight trace equals the HF forward: {same}")
    sc = score_objects(model, a, batch, ["Paris"])
    print(f"log P('Paris' | prompt) = {sc.total[0].item():.3f} (random weights)")
    return 0 if same else 1


def register(sub) -> None:
    p = sub.add_parser("smoke", help="self-check on a tiny random Qwen2-Audio (offline, seconds)")
    p.set_defaults(func=run)
