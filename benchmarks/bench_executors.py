"""Scale-out benchmark: one fixed tracing or evaluation job, in-process vs. a local Ray pool.

``--job trace`` (default): ``--n`` spoken prompts (espeak-ng, Known-1000 facts) traced with a small span-mode
experiment (audio MLP window 3 + text residual window 1) on ``--model`` (default ``tiny-random``).

Measured, each on a fresh output folder:

* ``local``: ``run_experiment`` in this process, with 1 and with ``--threads`` torch threads
  (each after a one-example warm-up);
* ``ray``: the same job on ``--workers`` Ray actors (1 CPU each, so torch uses 1 thread per
  actor), timed on warm actors (each has traced one example); Ray start-up + model loading is
  reported separately;
* the scheduling overhead per shard: the round trip of a no-op shard function on the warm pool,
  and (ray time − ideal time) / shards, where ideal = per-example local work spread over workers.

The results of both runs are compared (they must be identical). Prints one JSON object.

``--job eval``: ``--n`` edit cases of the organism's own CounterFact facts (1 paraphrase, 1
neighbour each) edited with ROME at ``text.layers.4`` (identity covariance: no statistics corpus)
and scored before/after — ``evaluation.run`` in this process (1 torch thread, after a one-case
warm-up) vs. ``evaluation.runs.evaluate`` on the warm Ray pool; per-case records must be identical.

    python benchmarks/bench_executors.py [--job trace|eval] [--n 8] [--workers 2] [--shard-size 1] [--model M]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="prompts traced")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the local run")
    ap.add_argument("--model", default=None, help="default: tiny-random (trace), organism (eval)")
    ap.add_argument("--job", choices=["trace", "eval"], default="trace")
    args = ap.parse_args()
    if args.job == "eval":
        return bench_eval(args)
    args.model = args.model or "tiny-random"

    import torch
    import xarray as xr

    torch.set_num_threads(args.threads)
    import ray

    from lalm_interp.bench.builder import build
    from lalm_interp.bench.datasets import load_facts
    from lalm_interp.bench.store import Benchmark
    from lalm_interp.loading import load_model
    from lalm_interp.executors import RayExecutor
    from lalm_interp.executors.ray_executor import timed_noop
    from lalm_interp.specs import Corrupt, Experiment, Restore
    from lalm_interp.tracing.run import prompts_from_bench, run_experiment

    exp = Experiment("bench-executors", corrupt=Corrupt(scale=3.0), restores=(
        Restore("audio.layers.*.mlp", window=3, positions=("first_subject_word",)),
        Restore("text.layers.*.resid", window=1, positions=("last_subject_word", "last_token")),
    ))
    work = Path(tempfile.mkdtemp(prefix="bench_exec_"))
    try:
        build(load_facts("known1000", limit=args.n), work / "bench", renditions=1, forms=("prompt",), progress=False)
        prompts = prompts_from_bench(Benchmark.open(work / "bench"))
        model, processor, adapter = load_model(args.model)

        t_local = {}
        for threads in sorted({1, args.threads}):  # warm-up (first-call costs), then timed
            torch.set_num_threads(threads)
            run_experiment(model, processor, adapter, prompts[:1], exp, work / f"warm{threads}", progress=False,
                           plots=False)
            t = time.perf_counter()
            run_experiment(model, processor, adapter, prompts, exp, work / f"local{threads}", progress=False,
                           plots=False)
            t_local[threads] = time.perf_counter() - t

        t = time.perf_counter()
        ray_tmp = tempfile.mkdtemp(prefix="ray_", dir="/tmp")
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, _temp_dir=ray_tmp)
        ex = RayExecutor(args.model, workers=args.workers).start()
        t_start = time.perf_counter() - t
        try:
            run_experiment(None, None, None, prompts[:args.workers], exp, work / "ray-warm", progress=False,
                           plots=False, executor=ex, shard_size=1)  # each actor's first-call costs
            t = time.perf_counter()
            run_experiment(None, None, None, prompts, exp, work / "ray", progress=False, plots=False,
                           executor=ex, shard_size=args.shard_size)
            t_ray = time.perf_counter() - t
            noop = timed_noop(ex, 50)
        finally:
            ex.close()
            ray.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)

        same = all(
            xr.load_dataset(p, engine="h5netcdf").identical(xr.load_dataset(work / "ray" / "examples" / p.name,
                                                                            engine="h5netcdf"))
            for p in (work / "local1" / "examples").glob("*.nc"))
        shards = -(-len(prompts) // args.shard_size)
        best = min(t_local.values())
        ideal = t_local[1] / args.workers  # the 1-thread local work spread perfectly over the actors
        print(json.dumps({
            "model": args.model, "examples": len(prompts), "workers": args.workers, "shard_size": args.shard_size,
            "shards": shards, "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
            **{f"local_{k}thread_s": round(v, 2) for k, v in t_local.items()}, "ray_s": round(t_ray, 2),
            "ray_over_best_local": round(t_ray / best, 2),
            "ray_startup_s": round(t_start, 2),
            "noop_shard_roundtrip_ms": round(1000 * noop, 2),
            "overhead_per_shard_vs_ideal_s": round((t_ray - ideal) / shards, 3),
            "identical_results": bool(same),
        }, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_eval(args) -> None:
    import torch

    torch.set_num_threads(1)
    import ray

    import lalm_interp
    from lalm_interp.bench import Benchmark, build
    from lalm_interp.loading import load_model
    from lalm_interp.editors import EditContext, make
    from lalm_interp.evaluation import cases_from_benchmark, run
    from lalm_interp.evaluation.runs import evaluate
    from lalm_interp.executors import RayExecutor
    from lalm_interp.organism.export import recipe_of
    from lalm_interp.organism.facts import choose_facts

    model_spec = args.model or "organism"
    recipe = recipe_of(Path(lalm_interp.__file__).parent / "assets" / "organism")
    work = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    editor = ("rome", "text.layers.4.mlp.down")
    try:
        build(choose_facts(recipe)[:args.n], work / "bench", renditions=[recipe.train_renditions[0]],
              max_paraphrases=1, max_neighbours=1, workers=1, progress=False)
        cases = cases_from_benchmark(Benchmark.open(work / "bench"), word="last")
        model, processor, adapter = load_model(model_spec)
        ctx = EditContext(model, processor, adapter)
        run(make(*editor, cov="identity"), ctx, cases[:1])  # warm-up
        t = time.perf_counter()
        local = run(make(*editor, cov="identity"), ctx, cases)
        t_local = time.perf_counter() - t

        t = time.perf_counter()
        ray_tmp = tempfile.mkdtemp(prefix="ray_", dir="/tmp")
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, _temp_dir=ray_tmp)
        ex = RayExecutor(model_spec, workers=args.workers).start()
        t_start = time.perf_counter() - t
        try:
            evaluate(ex, make(*editor, cov="identity"), cases[:args.workers], work / "ray-warm",
                             shard_size=1)  # each actor's first-call costs
            t = time.perf_counter()
            res = evaluate(ex, make(*editor, cov="identity"), cases, work / "ray", shard_size=args.shard_size)
            t_ray = time.perf_counter() - t
        finally:
            ex.close()
            ray.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)
        same = res.records == json.loads(json.dumps(local.records)) and res.edits == json.loads(json.dumps(local.edits))
        shards = res.meta["shards"]
        print(json.dumps({
            "job": "eval", "model": model_spec, "cases": len(cases), "workers": args.workers,
            "shard_size": args.shard_size, "shards": shards, "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2), "local_1thread_s": round(t_local, 2),
            "ray_s": round(t_ray, 2), "ray_over_local": round(t_ray / t_local, 2),
            "ray_startup_s": round(t_start, 2),
            "overhead_per_shard_vs_ideal_s": round((t_ray - t_local / args.workers) / max(shards, 1), 3),
            "identical_results": bool(same),
        }, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
