"""``lalm-interp organism``: train the embedded tiny Qwen2-Audio, or evaluate a checkpoint.

    lalm-interp organism train --out DIR [--seed N] [--minutes M] [--steps N] [--work W]
    lalm-interp organism eval [--model organism|DIR] [--work W] [--subset]

Both print JSON. See docs/organism.md.
"""

from __future__ import annotations

import sys


def run_train(args) -> int:
    from lalm_interp.organism.pipeline import dumps, train_and_export
    from lalm_interp.organism.recipe import Recipe

    recipe = Recipe()
    kw = {}
    if args.seed is not None:
        kw["seed"] = args.seed
    if args.steps is not None:
        kw["steps"] = args.steps
    if kw:
        recipe = recipe.replace(**kw)
    m = train_and_export(args.out, recipe, work=args.work, minutes=args.minutes, progress=not args.quiet)
    print(dumps({"out": args.out, "steps_done": m["steps_done"], "train_wall_s": m["train_wall_s"],
                 "size_bytes": m["size_bytes"], "metrics": m["metrics"]}))
    return 0


def run_eval(args) -> int:
    from lalm_interp.organism.pipeline import dumps, evaluate_checkpoint

    work = args.work
    if work is None:
        from lalm_interp.cache.layout import work_dir

        work = work_dir("organism", args.cache)
    out = evaluate_checkpoint(args.model, work=work, subset_only=args.subset, progress=False)
    print(dumps(out))
    sys.stdout.flush()
    return 0


def register(sub) -> None:
    p = sub.add_parser("organism", help="train or evaluate the embedded tiny Qwen2-Audio (the organism)")
    osub = p.add_subparsers(dest="organism_command", metavar="ACTION")
    t = osub.add_parser("train", help="train the organism from the recipe and export a checkpoint to --out")
    t.add_argument("--out", required=True, help="checkpoint folder to write (config, safetensors, processor, manifest)")
    t.add_argument("--seed", type=int, default=None, help="seed (default: the recipe's, 0)")
    t.add_argument("--minutes", type=float, default=None,
                   help="wall-clock cap; the run stops early (and is then not the recipe's) when reached")
    t.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the recipe's)")
    t.add_argument("--work", default=None, help="work folder for the spoken benchmark (default: OUT-work)")
    t.add_argument("--quiet", action="store_true", help="no per-step log lines")
    t.set_defaults(func=run_train)
    e = osub.add_parser("eval", help="top-1 accuracy (training renditions, held-out voices, paraphrases, "
                                     "neighbourhood) and the subject-corruption effect, as JSON")
    e.add_argument("--model", default="organism", help="'organism' (shipped) or a checkpoint folder")
    e.add_argument("--work", default=None,
                   help="folder for the synthesised benchmark, reused across runs (default: <cache root>/work/organism, "
                        "cache root = --cache, $LALM_INTERP_CACHE or ./cache)")
    e.add_argument("--cache", default=None, metavar="DIR", help="cache root whose work/ folder holds the benchmark")
    e.add_argument("--subset", action="store_true", help="only the manifest's small fixed subset (fast)")
    e.set_defaults(func=run_eval)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
