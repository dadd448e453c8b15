"""Exact tracing savings benchmark (issue #18): the segmented back end vs today's batched compiler.

One 3.0 s clip (seeded noise; 4 words spanning 3 s; subject = the first two words) on a tiny random
Qwen2-Audio with the real 1,500-frame encoder window (``TinyConfig(window_s=30)``: tiny-random's
widths), at 6+6 layers and at the 7B's depth, 32+32 (skipped by ``--quick``). For each stream
(audio, text) and window (1: ``bench_tracing``'s sweep; 10: ``bench_gpu``'s and the paper's), the
full hidden-state sweep (``Restore("<stream>.layers.*.resid", positions="each")``) runs

* on the segmented path (``Experiment.savings`` default: every saving) over ALL rows, timed with
  the program's construction and its reference pass (a fresh program, after a warm-up);
* on the batched path (``savings=()``, ``Compiled._program = None``) — over all rows when that fits
  ``--batched-budget-s``, otherwise over an evenly spaced sample of whole chunks (at least two full
  chunks of the chunk size the memory budget gives) and extrapolated per row: every batched row is
  one row of a full forward, so its cost is uniform (a full sweep's last, partial chunk makes the
  extrapolation favour the batched path slightly).

Reported per sweep: rows, seconds, ms/row, the ratio batched/segmented (per row), forwards, and the
max |ΔP| (P = exp(log-prob) of the object) between the two paths on the rows both ran — it must be
≤ 1e-5 (the script exits 1 otherwise).

``subsets`` (6+6, window 1): each saving alone and all-but-one, on an evenly spaced sample of the
sweep's rows (``--subset-rows``; the same sample for every variant, the batched path included), so
the speed-up can be attributed. Sampled segmented timings are comparable within this table only.

``memory``: for one chunk of each path at the same ``memory_mb`` (the Experiment default, 2048),
the activation estimate (batched: ``compile.rows_per_forward``'s per-row estimate × the rows of the
forward, the two reference rows included; segmented: the program's ``chunk_log`` entry for its
largest chunk) against the real peak, measured with ``torch.profiler(profile_memory=True)``: the
``self_cpu_memory_usage`` of every event summed in time order (ops carry their allocations,
``[memory]`` events the frees) gives a live-bytes timeline over the chunk; its maximum is the peak.

    python benchmarks/bench_savings.py [--quick] [--out FILE.json] [--threads 2]

Results: ``--out`` (default ``benchmarks/results/bench_savings.json``) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
WORDS = (("Metropolitan", 0.0, 0.9), ("France's", 0.9, 1.6), ("capital", 1.6, 2.4), ("is", 2.4, 3.0))


def setup(layers: int, seed: int = 1):
    """(model, processor, adapter, example) for ``layers`` + ``layers`` layers."""
    from lalm_interp import adapters
    from lalm_interp.models.tiny import TinyConfig, tiny_qwen2_audio
    from lalm_interp.prompts import SpokenPrompt

    model, processor = tiny_qwen2_audio(TinyConfig(audio_layers=layers, text_layers=layers, window_s=30, seed=seed))
    adapter = adapters.for_model(model, processor)
    audio = (0.3 * np.random.default_rng(0).standard_normal(int(3.0 * 16000))).astype(np.float32)
    ex = SpokenPrompt("bench", audio, WORDS, (0, 1), "Paris", sample_rate=16000)
    return model, processor, adapter, ex


def prepare(state, stream: str, window: int):
    """(TracePrompt, rows) of the full resid sweep of ``stream`` at ``window``; base runs done."""
    from lalm_interp.interventions.engine import TracePrompt
    from lalm_interp.specs import Experiment, Restore

    model, processor, adapter, ex = state
    f = Restore(f"{stream}.layers.*.resid", window=window, positions="each")
    prep = TracePrompt(model, processor, adapter, ex, Experiment("bench", restores=(f,)))
    prep.compiled.base()
    return prep, prep.rows(f)


def even(n: int, k: int) -> list[int]:
    """``k`` evenly spaced indices of ``range(n)`` (all when ``k >= n``)."""
    if k >= n:
        return list(range(n))
    return sorted({round(float(x)) for x in np.linspace(0, n - 1, k)})


def batched_chunk(c, stream: str) -> int:
    """Restorations per batched forward (rows_per_forward minus the two reference rows); the text
    sweep reuses the encoder (``reuse_encoder``), the audio sweep runs it in every forward."""
    from lalm_interp.interventions.compile import rows_per_forward

    text_only = stream == "text"
    return rows_per_forward(c.adapter, c.inputs["input_ids"].shape[1], c.memory_mb, text_only=text_only) - 2


def per_row_estimate(c, text_only: bool) -> float:
    """``rows_per_forward``'s per-row byte estimate (recovered from it with a huge budget)."""
    from lalm_interp.interventions.compile import rows_per_forward

    big = 2**30
    return big * 2**20 / rows_per_forward(c.adapter, c.inputs["input_ids"].shape[1], big, text_only=text_only)


def time_segmented(c, rows, savings, *, record_chunks: bool = False) -> dict[str, Any]:
    """Run ``rows`` on a fresh segmented program with ``savings``: seconds (construction and the
    reference pass included), forwards, log-probs and (``record_chunks``) each chunk's row indices."""
    c.savings = tuple(savings)
    c._program = None
    chunks: list[list[int]] = []
    t0 = time.perf_counter()
    prog = c.program()
    if prog is None:
        raise RuntimeError("no segmented program for this model/corruption (docs/usage/tracing.md#savings)")
    if record_chunks:
        inner = prog._chunks

        def rec(jobs, t, memory_mb):
            for ch in inner(jobs, t, memory_mb):
                chunks.append([j.index for j in ch])
                yield ch
        prog._chunks = rec
    lp = c.run(rows)
    dt = time.perf_counter() - t0
    if c.segmented_rows != len(rows):
        raise RuntimeError(f"only {c.segmented_rows} of {len(rows)} rows ran segmented")
    return {"s": dt, "lp": lp, "forwards": prog.forwards, "prog": prog, "chunks": chunks}


def time_batched(c, rows) -> dict[str, Any]:
    c.savings = ()
    c._program = None
    f0 = c.forwards
    t0 = time.perf_counter()
    lp = c.run(rows)
    return {"s": time.perf_counter() - t0, "lp": lp, "forwards": c.forwards - f0}


def dP(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.exp() - b.exp()).abs().max())


def sweep(state, stream: str, window: int, budget_s: float, seg_first: bool) -> tuple[dict[str, Any], Any, Any]:
    """Side-by-side timing of one full sweep; returns (record, prep, segmented run)."""
    prep, rows = prepare(state, stream, window)
    c = prep.compiled
    n = len(rows)
    per = batched_chunk(c, stream)
    # warm-up both paths on a few rows (kernels, allocator, nnsight)
    warm = [rows[i] for i in even(n, 6)]
    time_segmented(c, warm, _all())
    wb = time_batched(c, warm)
    est_full = wb["s"] / len(warm) * n
    if est_full <= budget_s or 2 * per >= n:
        idx = list(range(n))
    else:
        k = 2 * per  # two full chunks, evenly spaced over the sweep
        idx = even(n, k)
        while len(idx) < k:  # rounding collisions
            k += 1
            idx = even(n, k)
    sample = [rows[i] for i in idx]

    def seg():
        return time_segmented(c, rows, _all(), record_chunks=True)

    def bat():
        return time_batched(c, sample)

    if seg_first:
        s, b = seg(), bat()
    else:
        b, s = bat(), seg()
    seg_ms = 1e3 * s["s"] / n
    bat_ms = 1e3 * b["s"] / len(idx)
    rec = {
        "stream": stream, "window": window, "rows": n,
        "segmented": {"rows_timed": n, "s": round(s["s"], 3), "ms_per_row": round(seg_ms, 3),
                      "forwards": s["forwards"], "chunks": len(s["prog"].chunk_log)},
        "batched": {"rows_timed": len(idx), "s": round(b["s"], 3), "ms_per_row": round(bat_ms, 3),
                    "forwards": b["forwards"], "rows_per_forward": per + 2,
                    "extrapolated": len(idx) < n,
                    "full_sweep_s": round(bat_ms * n / 1e3, 2)},
        "ratio": round(bat_ms / seg_ms, 2),
        "max_abs_dP": dP(s["lp"][idx], b["lp"]),
        "dP_rows": len(idx),
        "order": "segmented first" if seg_first else "batched first",
    }
    if len(idx) < n:
        rec["batched"]["note"] = (f"timed on {len(idx)} evenly spaced rows (2 full chunks of {per}); "
                                  f"full_sweep_s extrapolated per row to {n} rows")
    return rec, prep, s


def _all() -> tuple[str, ...]:
    from lalm_interp.specs import SAVINGS

    return tuple(SAVINGS)


def subsets(state, stream: str, max_rows: int) -> dict[str, Any]:
    """Each saving alone and all-but-one, window 1, on one evenly spaced sample of rows."""
    prep, rows = prepare(state, stream, 1)
    c = prep.compiled
    idx = even(len(rows), max_rows)
    sample = [rows[i] for i in idx]
    S = _all()
    variants = [("all", S)] + [(f"only {x}", (x,)) for x in S] + [(f"all but {x}", tuple(y for y in S if y != x)) for x in S]
    time_segmented(c, sample[:: max(1, len(sample) // 6)], S)  # warm-up
    b = time_batched(c, sample)
    out: dict[str, Any] = {"stream": stream, "window": 1, "rows": len(rows), "rows_timed": len(idx),
                           "batched": {"s": round(b["s"], 3), "ms_per_row": round(1e3 * b["s"] / len(idx), 3),
                                       "forwards": b["forwards"]}, "variants": {}}
    for name, sv in variants:
        r = time_segmented(c, sample, sv)
        out["variants"][name] = {"savings": list(sv), "s": round(r["s"], 3),
                                 "ms_per_row": round(1e3 * r["s"] / len(idx), 3), "forwards": r["forwards"],
                                 "speedup_vs_batched": round(b["s"] / r["s"], 2), "max_abs_dP": dP(r["lp"], b["lp"])}
        print(f"  subset {stream} {name:28s} {r['s']:8.2f} s  x{b['s'] / r['s']:6.2f}  dP {dP(r['lp'], b['lp']):.1e}",
              flush=True)
    return out


def live_peak(fn: Callable[[], Any]) -> int:
    """Peak live CPU bytes while ``fn`` runs (above what was live when it started)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        fn()
    live = peak = 0
    for e in sorted(p.events(), key=lambda e: e.time_range.start):
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def memory(state, stream: str, prep, seg_run) -> dict[str, Any]:
    """Estimate vs real peak for one chunk of each path at the Experiment's memory_mb."""
    c = prep.compiled
    rows = prep.rows(prep.exp.restores[0])
    # batched: the sweep's first full chunk (the path's own chunking: one forward)
    per = batched_chunk(c, stream)
    text_only = stream == "text"
    c.savings = ()
    c._program = None
    chunk = rows[:per]
    c._run_batched(chunk[:2], True, None)  # warm-up
    real_b = live_peak(lambda: c._run_batched(chunk, True, None))
    est_b = per_row_estimate(c, text_only) * (len(chunk) + 2)
    # segmented: the largest-estimate chunk of the timed run, rerun alone on the same program
    prog = seg_run["prog"]
    k = max(range(len(prog.chunk_log)), key=lambda i: prog.chunk_log[i][1])
    n_rows, est_s = prog.chunk_log[k]
    sub = [rows[i] for i in seg_run["chunks"][k]]
    c.savings = _all()
    c._program = prog
    before = len(prog.chunk_log)
    real_s = live_peak(lambda: prog.run(sub, c.memory_mb))
    again = prog.chunk_log[before:]
    mb = 2**20
    return {
        "stream": stream, "memory_mb": c.memory_mb,
        "batched": {"rows_per_chunk": len(chunk) + 2, "estimate_mb": round(est_b / mb, 2),
                    "real_peak_mb": round(real_b / mb, 2), "estimate_over_real": round(est_b / max(real_b, 1), 2)},
        "segmented": {"rows_per_chunk": n_rows, "estimate_mb": round(est_s / mb, 2),
                      "real_peak_mb": round(real_s / mb, 2), "estimate_over_real": round(est_s / max(real_s, 1), 2),
                      "rerun_chunks": [list(x) for x in again],
                      "note": "largest-estimate chunk of the timed sweep, rerun alone (references cached)"},
        "peak_per_chunk_grew": bool(real_s > real_b),
    }


def table(res: dict[str, Any]) -> str:
    lines = ["| config | stream | window | rows | segmented s (ms/row, fwd) | batched s (ms/row, fwd; rows timed) | ratio | max abs dP |",
             "|---|---|---|---|---|---|---|---|"]
    for cfg, r in res["configs"].items():
        for s in r["sweeps"]:
            a, b = s["segmented"], s["batched"]
            bt = f"{b['full_sweep_s']:.1f}{'*' if b['extrapolated'] else ''} ({b['ms_per_row']:.1f}, {b['forwards']}; {b['rows_timed']})"
            lines.append(f"| {cfg} | {s['stream']} | {s['window']} | {s['rows']} | {a['s']:.2f} ({a['ms_per_row']:.2f}, "
                         f"{a['forwards']}) | {bt} | {s['ratio']:.1f}x | {s['max_abs_dP']:.1e} |")
    lines.append("\n`*` batched time extrapolated per row from the rows timed (two full chunks, evenly spaced).")
    for cfg, r in res["configs"].items():
        for sub in r.get("subsets", []):
            lines += [(f"\nSavings subsets, {cfg}, {sub['stream']}, window 1, {sub['rows_timed']} of {sub['rows']} rows "
                       f"(batched {sub['batched']['s']:.2f} s):"), "", "| savings | s | x vs batched | max abs dP |",
                      "|---|---|---|---|"]
            for name, v in sub["variants"].items():
                lines.append(f"| {name} | {v['s']:.2f} | {v['speedup_vs_batched']:.2f} | {v['max_abs_dP']:.1e} |")
        for m in r.get("memory", []):
            lines += [f"\nMemory, {cfg}, {m['stream']}, memory_mb {m['memory_mb']}:", "",
                      "| path | rows/chunk | estimate MB | real peak MB | estimate/real |", "|---|---|---|---|---|"]
            for p in ("batched", "segmented"):
                x = m[p]
                lines.append(f"| {p} | {x['rows_per_chunk']} | {x['estimate_mb']} | {x['real_peak_mb']} | {x['estimate_over_real']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="6+6 layers only (skip the 32+32 configuration)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_savings.json"))
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every timing")
    ap.add_argument("--batched-budget-s", type=float, default=60.0,
                    help="run the batched path on every row when its estimated time is below this; else sample")
    ap.add_argument("--subset-rows", type=int, default=300, help="rows (evenly spaced) for the savings subsets")
    ap.add_argument("--windows", default="1,10", help="comma-separated restoration windows")
    ap.add_argument("--streams", default="audio,text", help="comma-separated streams")
    ap.add_argument("--layers", default=None, help="comma-separated depths (default 6,32; --quick: 6)")
    ap.add_argument("--no-subsets", action="store_true", help="skip the savings subsets")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import nnsight
    import transformers

    res: dict[str, Any] = {
        "device": "cpu", "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": args.threads, "torch": torch.__version__, "transformers": transformers.__version__,
        "nnsight": getattr(nnsight, "__version__", "?"), "date_utc": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "clip_s": 3.0, "tolerance_dP": TOL, "configs": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out.write_text(json.dumps(res, indent=1))

    windows = [int(w) for w in args.windows.split(",")]
    bad = []
    flip = False
    streams = [x for x in args.streams.split(",") if x]
    depths = [int(x) for x in args.layers.split(",")] if args.layers else ([6] if args.quick else [6, 32])
    for layers in depths:
        cfg = f"{layers}+{layers}"
        state = setup(layers)
        r: dict[str, Any] = {"audio_layers": layers, "text_layers": layers, "window_s": 30, "sweeps": []}
        res["configs"][cfg] = r
        for stream in streams:
            for window in windows:
                rec, prep, s = sweep(state, stream, window, args.batched_budget_s, seg_first=flip)
                flip = not flip
                r["sweeps"].append(rec)
                print(f"{cfg} {stream} w{window}: {rec['rows']} rows seg {rec['segmented']['s']:.2f} s "
                      f"batched {rec['batched']['full_sweep_s']:.2f} s{' (extrap.)' if rec['batched']['extrapolated'] else ''} "
                      f"x{rec['ratio']} dP {rec['max_abs_dP']:.1e}", flush=True)
                if rec["max_abs_dP"] > TOL:
                    bad.append(f"{cfg} {stream} window {window}: max |dP| {rec['max_abs_dP']:.2e}")
                if layers == 6 and window == 1:
                    r.setdefault("memory", []).append(memory(state, stream, prep, s))
                    print(f"  memory {stream}: {json.dumps(r['memory'][-1])}", flush=True)
                save()
        if layers == 6 and not args.no_subsets:
            r["subsets"] = []
            for stream in streams:
                sub = subsets(state, stream, args.subset_rows)
                r["subsets"].append(sub)
                bad += [f"{cfg} {stream} subset {k}: max |dP| {v['max_abs_dP']:.2e}"
                        for k, v in sub["variants"].items() if v["max_abs_dP"] > TOL]
                save()
    res["failures"] = bad
    save()
    print()
    print(table(res))
    if bad:
        print("\nNOT EXACT (|dP| > 1e-5):\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
