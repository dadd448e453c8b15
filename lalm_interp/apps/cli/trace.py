"""``lalm-interp trace run SPEC.py --model organism --bench DIR --out DIR [--limit N]``."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

from . import count


def read_fact_ids(path: str, bench) -> list[str]:
    """The fact ids listed in ``path``; ids the benchmark does not hold are an error naming them
    (with the closest ids it does hold)."""
    from lalm_interp.sites import suggest
    from lalm_interp.specs import SpecError

    ids = [line.strip() for line in Path(path).read_text("utf-8").splitlines() if line.strip()]
    known = set(bench.facts)
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise SpecError(f"--facts {path!r}: {len(unknown)} of {len(ids)} fact id(s) are not in the benchmark, e.g. "
                        f"{unknown[0]!r}.{suggest(unknown[0], sorted(known))}\n  fix: list ids the benchmark holds "
                        "(`lalm-interp bench show BENCH`), one per line")
    return ids


def comma_list(text: str) -> list[str]:
    """``a,b`` → ``['a', 'b']`` (list options are comma-separated everywhere, as ``bench build --forms``)."""
    return [t.strip() for t in str(text).split(",") if t.strip()]


def run(args) -> int:
    from lalm_interp.specs import WindowClipped

    # a window longer than the model's stack is clipped (ROME's rule): one short note, not an error
    with warnings.catch_warnings():
        warnings.filterwarnings("always", category=WindowClipped)
        warnings.showwarning = _note_or(warnings.showwarning)
        return _run(args)


def check_forms(forms: tuple[str, ...], bench) -> None:
    """Every ``--forms`` value must be a form of the benchmark (a typo would trace nothing)."""
    import difflib

    from lalm_interp.specs import SpecError

    have = sorted({it.form for it in bench})
    for f in forms:
        if f not in have:
            hint = difflib.get_close_matches(f, have, n=1)
            raise SpecError(f"--forms {f!r}: the benchmark {bench.root} has forms {have}"
                            + (f"; did you mean {hint[0]!r}?" if hint else ".")
                            + " Give a comma-separated list of them, e.g. --forms prompt,subject.")


def _run(args) -> int:
    from lalm_interp.bench.store import Benchmark
    from lalm_interp.loading import resolve_source
    from lalm_interp.specs import SpecError, experiment_from_file
    from lalm_interp.tracing.run import benchmark_id, prompts_from_bench, run_experiment

    resolve_source(args.model)  # an unknown or unreachable --model fails before anything is read
    if args.facts and not Path(args.facts).is_file():
        what = "is a folder, not a file" if Path(args.facts).is_dir() else "does not exist"
        raise SpecError(f"--facts {args.facts!r} {what}.\n  expected: a text file with one fact id per line "
                        "(e.g. counterfact:70)\n  fix: check the path, or leave --facts out to trace every fact")
    exp = experiment_from_file(args.spec)
    if args.max_window is not None:
        if args.max_window < 1:
            raise SpecError(f"--max-window {args.max_window}: give a window of at least 1 layer.")
        exp = replace(exp, restores=tuple(replace(r, window=min(r.window, args.max_window)) for r in exp.restores))
    bench = Benchmark.open(args.bench)
    fact_ids = None
    if args.facts:
        fact_ids = read_fact_ids(args.facts, bench)
    forms = tuple(f for group in args.forms for f in comma_list(group))
    check_forms(forms, bench)
    prompts = prompts_from_bench(bench, forms=forms, limit=args.limit, fact_ids=fact_ids)
    store = None
    if exp.reads:
        from lalm_interp.cache import Store

        store = Store(args.cache)
    from lalm_interp.executors import from_cli

    # the executor loads the model (in this process, or on each Ray worker) and validates the spec there
    with from_cli(args, args.model) as executor:
        agg = run_experiment(None, None, None, prompts, exp, args.out,
                             provenance={"model": args.model, "dataset": str(args.bench),
                                         "benchmark": benchmark_id(args.bench)}, store=store,
                             progress=not args.no_progress, executor=executor,
                             shard_size=getattr(args, "shard_size", None), new_run=args.new_run)
    import numpy as np

    summary = {
        "examples": int(agg.sizes["example"]),
        "skipped": int(agg.attrs.get("n_skipped", 0)),
        "traced_now": int(agg.attrs.get("n_traced_now", 0)),
        "window_used": json.loads(agg.attrs.get("window_used", "{}")),
        "p_clean": float(f'{float(agg["p_clean"].mean()):.4g}'),
        "p_corrupt": float(f'{float(agg["p_corrupt"].mean()):.4g}'),
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


def _note_or(show):
    """``warnings.showwarning`` that prints a :class:`WindowClipped` as a one-line note on stderr
    (no file/line clutter) and hands every other warning to ``show``."""
    import sys

    from lalm_interp.specs import WindowClipped

    seen: set[str] = set()

    def note(message, category, *args, **kwargs) -> None:
        if isinstance(category, type) and issubclass(category, WindowClipped):
            if str(message) not in seen:
                seen.add(str(message))
                print(f"lalm-interp: note: {message}", file=sys.stderr, flush=True)
        else:
            show(message, category, *args, **kwargs)

    return note


def register(sub) -> None:
    p = sub.add_parser("trace", help="speech-aware causal tracing")
    tsub = p.add_subparsers(dest="trace_command", metavar="SUBCOMMAND")
    r = tsub.add_parser("run", help="run a tracing spec (tracing_specs/*.py) over a spoken benchmark")
    r.add_argument("spec", help="a Python file defining EXPERIMENT = Experiment(...)")
    r.add_argument("--model", default="organism", help="'organism', a checkpoint dir, or 'tiny-random'")
    r.add_argument("--bench", required=True, help="benchmark folder (lalm-interp bench build)")
    r.add_argument("--out", required=True, help="output folder (resumable)")
    r.add_argument("--limit", type=count(), default=None, help="trace at most N prompts")
    r.add_argument("--forms", nargs="+", default=["prompt"], metavar="FORMS",
                   help="comma-separated benchmark forms to trace, e.g. prompt,paraphrase (default: prompt)")
    r.add_argument("--facts", default=None, help="file with one fact id per line (e.g. known facts)")
    r.add_argument("--max-window", type=int, default=None,
                   help="cap every Restore.window at N layers (a window longer than the model's stack is "
                        "clipped to it anyway, ROME's rule; the window used is in aie.nc and experiment.json)")
    r.add_argument("--new-run", action="store_true",
                   help="--out holds another run (other model, weights, benchmark or spec): move its files to "
                        "OUT/quarantine/previous-run.<time>/ and start afresh instead of refusing")
    r.add_argument("--cache", default=None, help="cache root for Read specs (default $LALM_INTERP_CACHE or ./cache)")
    r.add_argument("--no-progress", action="store_true")
    from ._scaleout import add_cli_options

    add_cli_options(r)
    r.set_defaults(func=run)
    p.set_defaults(func=lambda a: p.print_help() or 0)
