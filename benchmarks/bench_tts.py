"""Utterances per second: espeak-ng forked per utterance (bit-exact, N workers) vs one in-process
loop (fast, not reproducible). Run: ``python benchmarks/bench_tts.py [--n 100] [--workers 2]``.

The forked run goes first: the in-process loop leaves the library in a drifted state that later
forks would inherit (docs/gotchas/tts-determinism.md).
"""

from __future__ import annotations

import argparse
import time

from lalm_interp.bench.datasets import load_facts
from lalm_interp.speech.espeak import EspeakBackend
from lalm_interp.speech.tts import Rendition


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100, help="sentences (default 100)")
    ap.add_argument("--workers", type=int, default=2, help="forked workers (default 2)")
    args = ap.parse_args()
    texts = [f.prompt for f in load_facts("counterfact")][: args.n]
    backend = EspeakBackend()
    r = Rendition()
    backend.synthesize_many([(texts[0], r)], workers=1)  # warm imports (scipy) outside the timing
    t0 = time.perf_counter()
    forked = dict(backend.synthesize_many([(t, r) for t in texts], workers=args.workers))
    t_fork = time.perf_counter() - t0
    errors = sum(isinstance(u, Exception) for u in forked.values())
    t0 = time.perf_counter()
    inproc = [backend.synthesize_in_process(t, r) for t in texts]
    t_in = time.perf_counter() - t0
    audio_s = sum(u.duration_s for u in inproc)
    n = len(texts)
    print(f"{n} sentences, {audio_s:.0f} s of audio, {backend.version}")
    print(f"forked per utterance, {args.workers} workers: {t_fork:6.2f} s  {n / t_fork:7.1f} utt/s"
          f"  ({errors} errors)")
    print(f"in-process loop, 1 process:      {t_in:6.2f} s  {n / t_in:7.1f} utt/s")
    print(f"ratio in-process / forked: {t_fork / t_in:.1f}x faster in-process "
          f"(forked output is bit-exact; in-process output drifts)")


if __name__ == "__main__":
    main()
