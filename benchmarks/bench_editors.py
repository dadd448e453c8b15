"""Wall time of editing, relative to one forward+backward pass of the same model.

    python benchmarks/bench_editors.py [--threads 1] [--repeats 3]

Measures, on the organism when it is shipped (``lalm_interp/assets/organism``), else on the tiny
random 6+6-layer Qwen2-Audio (the output says which):
* one forward+backward pass (teacher-forced target, loss.backward()) — the unit;
* one single-layer ROME edit (10 v* steps) at an audio and at a text layer, statistics already cached;
* one multi-layer AlphaEdit edit over 3 text layers (statistics cached);
* key statistics of one site: computed from the corpus and written to the cache, vs read back from
  the cache by a fresh context.
Target: a single-layer edit ≤ 25 forward+backward passes. The prompt is 1.95 s of noise with word
timings (timing does not depend on what is said).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

WORDS = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785), ("is", 1.785, 1.943))


def noise(seconds: float, seed: int) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def model_under_test():
    import lalm_interp
    from lalm_interp import adapters

    org = Path(lalm_interp.__file__).parent / "assets" / "organism"
    if (org / "config.json").is_file():
        m, p, a = lalm_interp.load("organism")
        return m, p, a, "organism (trained tiny Qwen2-Audio)"
    from lalm_interp.models.tiny import TinyConfig, tiny_qwen2_audio

    m, p = tiny_qwen2_audio(TinyConfig(audio_layers=6, text_layers=6, seed=1))
    return m, p, adapters.for_model(m, p), "tiny random Qwen2-Audio, 6 audio + 6 text layers (organism not shipped)"


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--corpus-clips", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lalm_interp.cache import Store
    from lalm_interp.editors import EditContext, EditRequest, KeyCorpus, make
    from lalm_interp.editors.keys import key_stats, prepare
    from lalm_interp.scoring import logprobs_from_logits
    from lalm_interp.tracing import SpokenPrompt

    model, processor, adapter, what = model_under_test()
    n_audio, n_text = adapter.n_layers("audio"), adapter.n_layers("text")
    window = processor.feature_extractor.n_samples / 16000
    tmp = Path(tempfile.mkdtemp(prefix="bench-editors-"))
    clips = [noise(min(2.5, window), 100 + i) for i in range(args.corpus_clips)]
    corpus = KeyCorpus(f"noise:{len(clips)}", clips, sample_rate=16000)
    ctx = EditContext(model, processor, adapter, store=Store(tmp / "cache"), corpus=corpus)
    req = EditRequest(SpokenPrompt("bench", noise(1.95, 0), WORDS, (0, 1), "Paris", sample_rate=16000), "Seattle", "first")
    prep = prepare(ctx, req)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        logits = model(**prep.inputs, use_cache=False).logits
        _, total = logprobs_from_logits(logits, [prep.new_ids], prep.L)
        (-total[0]).backward()
        model.zero_grad(set_to_none=True)

    fwd_bwd()
    unit = best(fwd_bwd, max(args.repeats, 5))

    a_site, t_site = f"audio.layers.{n_audio // 2}.mlp.down", f"text.layers.{n_text // 2}.mlp.down"
    t_multi = f"text.layers.{max(n_text - 3, 0)}:{n_text}.mlp.down"
    # statistics: computed (and written) vs read from the cache by a fresh context
    t0 = time.perf_counter()
    key_stats(ctx, a_site + "@in")
    stats_compute = time.perf_counter() - t0

    def fresh_read():
        fresh = EditContext(model, processor, adapter, store=ctx.store, corpus=corpus, fingerprint=ctx.fingerprint)
        key_stats(fresh, a_site + "@in")

    stats_cached = best(fresh_read, args.repeats)
    for s in (t_site, *adapter.expand(t_multi)):
        key_stats(ctx, str(s).replace("@in", "") + "@in")

    def edit(method, site, **hp):
        def go():
            h = make(method, site, **hp).apply(ctx, req)
            h.revert()
        go()
        return best(go, args.repeats)

    rows = [
        ("forward+backward (unit)", unit),
        (f"ROME {a_site} (C = E[kk^T], 10 steps)", edit("rome", a_site)),
        (f"ROME {t_site} (C = E[kk^T], 10 steps)", edit("rome", t_site)),
        (f"ROME {t_site} (C = I, 10 steps)", edit("rome", t_site, cov="identity")),
        (f"AlphaEdit {t_multi} (10 steps)", edit("alphaedit", t_multi)),
        (f"key stats {a_site}@in: compute+write ({len(clips)} clips)", stats_compute),
        (f"key stats {a_site}@in: read from cache", stats_cached),
    ]
    print(f"model: {what}; torch threads {args.threads}; median of {args.repeats}")
    print("| what | seconds | x forward+backward |\n|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.4f} | {sec / unit:.1f} |")
    single = max(r[1] for r in rows[1:4]) / unit
    print(f"single-layer edit / fwd+bwd = {single:.1f} (target <= 25): {'OK' if single <= 25 else 'OVER'}")


if __name__ == "__main__":
    main()
