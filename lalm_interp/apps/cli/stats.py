"""``lalm-interp stats run``: compute and cache the key second moments that editors read (ROME's C,
AlphaEdit's protected keys) before any ``edit run`` — in this process, or in corpus chunks on Ray
workers (``--executor ray``). The statistics corpus and the cache key are exactly ``edit run``'s
(same ``--bench`` / ``--corpus`` / ``--corpus-n`` / ``--librispeech`` / ``--cache``, same model
fingerprint), so a later ``edit run`` finds them instead of recomputing. See
docs/usage/scale-out.md and docs/usage/cache.md."""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import start


def run(args) -> int:
    from lalm_interp.cache import Store
    from lalm_interp.cache.layout import stats_dir
    from lalm_interp.cache.stats import stats_path
    from lalm_interp.evaluation.runs import worker_info
    from lalm_interp.evaluation.stats import key_stats_sharded
    from lalm_interp.executors import ExecutorError, from_cli

    from .edit import key_corpus

    say = start(args)
    if not args.bench and not args.librispeech:
        raise ExecutorError("stats run needs the corpus `edit run` will use: --bench BENCH (the synthesised "
                            "protected corpus made from facts outside that benchmark, as edit run does) or "
                            "--librispeech DIR. Docs: docs/usage/scale-out.md#statistics-stats-run.")
    bench = None
    if args.bench:
        from lalm_interp.bench import Benchmark

        bench = Benchmark.open(args.bench)
    store = Store(args.cache) if args.cache else Store()
    corpus = key_corpus(args, bench, say)
    rows = []
    with from_cli(args, str(args.model)) as executor:  # this process by default, Ray workers with --executor ray
        info = executor.map(worker_info, [{"sites": args.site}])[0]  # bad sites fail here, on a worker
        fp = info["fingerprint"]
        where = "" if executor.in_process else f" on {executor!r}"
        for s in info["key_sites"]:
            t, cached = time.time(), stats_path(stats_dir(store.root), s, fp, corpus.id).exists()
            say(f"key statistics at {s} over {corpus.id} ({len(corpus.clips)} clips){where}")
            st = key_stats_sharded(executor, corpus, s, store=store, model=fp, recompute=args.recompute)
            rows.append((s, st, cached and not args.recompute, time.time() - t))
    out = {"model": str(args.model), "fingerprint": fp, "corpus": corpus.id, "clips": len(corpus.clips),
           "cache": str(Path(store.root).resolve()), "executor": args.executor, "stats": []}
    for s, st, cached, dt in rows:
        out["stats"].append({"site": s, "keys": int(st.count), "dim": int(st.dim), "cached_already": cached,
                             "seconds": round(dt, 3), "path": str(stats_path(stats_dir(store.root), s, fp, corpus.id))})
    print(json.dumps(out, indent=2))
    return 0


def register(sub) -> None:
    from .edit import add_corpus_options

    p = sub.add_parser("stats", help="key statistics (second moments) for editors, computed and cached ahead")
    s = p.add_subparsers(dest="stats_command", metavar="ACTION")
    r = s.add_parser("run", help="compute and cache key second moments at sites (what edit run reads)")
    r.add_argument("--model", required=True, help="'organism', a checkpoint folder, a hub id or 'tiny-random'")
    r.add_argument("--site", action="append", required=True,
                   help="site(s) whose input keys to summarise, e.g. text.layers.4 (= text.layers.4.mlp.down@in), "
                        "audio.layers.0:3; repeat for several")
    r.add_argument("--bench", default=None,
                   help="the benchmark edit run will edit: the protected corpus excludes its facts (as edit run's)")
    r.add_argument("--cache", default=None, help="activation cache root (default: $LALM_INTERP_CACHE or ./cache)")
    add_corpus_options(r)
    r.add_argument("--recompute", action="store_true", help="replace statistics that are cached already")
    r.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    r.add_argument("--quiet", action="store_true")
    from ._scaleout import add_cli_options

    add_cli_options(r)
    r.set_defaults(func=run)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])
