"""``lalm-interp trace run SPEC.py --model organism --bench DIR --out DIR [--limit N]``."""

from __future__ import annotations

import json
from dataclasses import replace


def load_model(name: str):
    """(model, processor, adapter) for a CLI ``--model``: a name/path for ``lalm_interp.load`` or
    ``tiny-random`` (a 6+6-layer random Qwen2-Audio, for plumbing checks)."""
    from lalm_interp import adapters

    if name == "tiny-random":
        from lalm_interp.models.tiny import TinyConfig, tiny_qwen2_audio

        model, processor = tiny_qwen2_audio(TinyConfig(audio_layers=6, text_layers=6, seed=1))
        return model, processor, adapters.for_model(model, processor)
    import lalm_interp

    return tuple(lalm_interp.load(name))


def run(args) -> int:
    from lalm_interp.bench.store import Benchmark
    from lalm_interp.specs import experiment_from_file
    from lalm_interp.tracing.run import prompts_from_bench, run_experiment

    exp = experiment_from_file(args.spec)
    if args.max_window is not None:
        exp = replace(exp, restores=tuple(replace(r, window=min(r.window, args.max_window)) for r in exp.restores))
    from lalm_interp.executors import from_cli

    executor = from_cli(args, args.model)
    if executor is None:
        model, processor, adapter = load_model(args.model)
        exp.validate(adapter)
    else:  # the workers load the model (and validate the spec); the driver only schedules and merges
        model = processor = adapter = None
    bench = Benchmark.open(args.bench)
    fact_ids = None
    if args.facts:
        fact_ids = [l.strip() for l in open(args.facts) if l.strip()]
    prompts = prompts_from_bench(bench, forms=tuple(args.forms), limit=args.limit, fact_ids=fact_ids)
    store = None
    if exp.reads:
        from lalm_interp.cache import Store

        store = Store(args.cache)
    try:
        agg = run_experiment(model, processor, adapter, prompts, exp, args.out,
                             provenance={"model": args.model, "dataset": str(args.bench)}, store=store,
                             progress=not args.no_progress, executor=executor,
                             shard_size=getattr(args, "shard_size", None))
    finally:
        if executor is not None:
            executor.close()
    import numpy as np

    summary = {
        "examples": int(agg.sizes["example"]),
        "p_clean": float(agg["p_clean"].mean()),
        "p_corrupt": float(agg["p_corrupt"].mean()),
        "peak_layer": {
            f"{fam}/{span}": int(np.nanargmax(agg["aie"].sel(family=fam, span=span).values))
            for fam in map(str, agg["family"].values)
            for span in map(str, agg["span"].values)
            if bool(agg["aie"].sel(family=fam, span=span).notnull().any())
        },
        "out": str(args.out),
    }
    print(json.dumps(summary, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("trace", help="speech-aware causal tracing")
    tsub = p.add_subparsers(dest="trace_command", metavar="SUBCOMMAND")
    r = tsub.add_parser("run", help="run a tracing spec (tracing_specs/*.py) over a spoken benchmark")
    r.add_argument("spec", help="a Python file defining EXPERIMENT = Experiment(...)")
    r.add_argument("--model", default="organism", help="'organism', a checkpoint dir, or 'tiny-random'")
    r.add_argument("--bench", required=True, help="benchmark folder (lalm-interp bench build)")
    r.add_argument("--out", required=True, help="output folder (resumable)")
    r.add_argument("--limit", type=int, default=None, help="trace at most N prompts")
    r.add_argument("--forms", nargs="+", default=["prompt"], help="benchmark forms to trace (default: prompt)")
    r.add_argument("--facts", default=None, help="file with one fact id per line (e.g. known facts)")
    r.add_argument("--max-window", type=int, default=None,
                   help="cap every Restore.window at N layers (the paper's 10 on a 6-layer model: use 3)")
    r.add_argument("--cache", default=None, help="cache root for Read specs (default $LALM_INTERP_CACHE or ./cache)")
    r.add_argument("--no-progress", action="store_true")
    from lalm_interp.executors import add_cli_options

    add_cli_options(r)
    r.set_defaults(func=run)
    p.set_defaults(func=lambda a: p.print_help() or 0)
