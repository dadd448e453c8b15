"""Tracing compiler benchmark: one example's full hidden-state sweep (every layer × every position).

Measured side by side in one run, for the audio stream (every encoder frame) and the text stream
(every prompt token):

* batched compiler (many restorations per forward)  vs  the naive loop (one trace per restoration);
* the segmented back end (``Experiment.savings``, on by default; ``bench_savings.py`` measures it at
  the real 1,500-frame window)  vs  the batched compiler;
* text-side sweep with encoder reuse  vs  recomputing the encoder in every forward;
* peak resident memory of each variant (each measured in its own forked process).

The naive loop is timed on an evenly spaced subsample of the restorations (``--naive-rows``) and
reported per restoration; the ratio compares per-restoration times.

    python benchmarks/bench_tracing.py [--model tiny-random|organism|DIR] [--naive-rows 24]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np


def _setup(model_name: str):
    import torch

    torch.set_num_threads(2)
    from lalm_interp.loading import load_model
    from lalm_interp.specs import Experiment
    from lalm_interp.tracing.causal import Prepared, SpokenPrompt

    model, processor, adapter = load_model(model_name)
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal(int(1.95 * 16000))).astype(np.float32)
    words = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785),
             ("is", 1.785, 1.943))
    ex = SpokenPrompt("bench", audio, words, (0, 1), "Paris", sample_rate=16000)
    return Prepared(model, processor, adapter, ex, Experiment("bench"))


def _measure(model_name: str, stream: str, mode: str, naive_rows: int, q) -> None:
    from lalm_interp.specs import Restore

    prep = _setup(model_name)
    rows = prep.rows(Restore(f"{stream}.layers.*.resid", window=1, positions="each"))
    c = prep.compiled
    c.base()
    if mode != "segmented":
        c.savings = ()  # the batched compiler, every row a full forward
    if mode == "naive":
        step = max(1, len(rows) // naive_rows)
        rows = rows[::step][:naive_rows]
    t0 = time.perf_counter()
    if mode in ("batched", "segmented"):
        c.run(rows, reuse_encoder=True)
    elif mode == "no_reuse":
        c.run(rows, reuse_encoder=False)
    else:
        c.run_naive(rows)
    dt = time.perf_counter() - t0
    q.put((len(rows), dt, c.forwards, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def measure(model_name: str, stream: str, mode: str, naive_rows: int) -> tuple[int, float, int, float]:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(model_name, stream, mode, naive_rows, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--naive-rows", type=int, default=24)
    args = ap.parse_args()
    print(f"model: {args.model}; one 1.95 s example; hidden-state (resid) sweep, window 1")
    for stream in ("audio", "text"):
        n_b, t_b, f_b, m_b = measure(args.model, stream, "batched", args.naive_rows)
        n_n, t_n, f_n, m_n = measure(args.model, stream, "naive", args.naive_rows)
        print(f"\n[{stream}] {n_b} restorations (layers × positions)")
        print(f"  batched : {t_b:8.2f} s  ({1e3 * t_b / n_b:7.2f} ms/restoration, {f_b} forwards, peak RSS {m_b:6.0f} MB)")
        print(f"  naive   : {t_n:8.2f} s  ({1e3 * t_n / n_n:7.2f} ms/restoration over {n_n} sampled, peak RSS {m_n:6.0f} MB)")
        print(f"  speed-up batched vs naive (per restoration): {(t_n / n_n) / (t_b / n_b):6.1f}x")
        n_s, t_s, f_s, m_s = measure(args.model, stream, "segmented", args.naive_rows)
        print(f"  segmented: {t_s:8.2f} s  ({1e3 * t_s / n_s:7.2f} ms/restoration, {f_s} forwards, peak RSS {m_s:6.0f} MB)")
        print(f"  speed-up segmented vs batched: {t_b / t_s:6.1f}x")
        if stream == "text":
            n_r, t_r, f_r, m_r = measure(args.model, stream, "no_reuse", args.naive_rows)
            print(f"  no encoder reuse: {t_r:8.2f} s ({f_r} forwards, peak RSS {m_r:6.0f} MB)")
            print(f"  speed-up encoder reuse vs recompute: {t_r / t_b:6.1f}x")


if __name__ == "__main__":
    main()
