"""``lalm-interp bench``: build and inspect spoken knowledge benchmarks.

    lalm-interp bench build --source counterfact --limit 500 --renditions 3 --out DIR
    lalm-interp bench build --source counterfact --limit 50 --max-seconds 3 --out DIR
    lalm-interp bench import --manifest my.csv --out DIR      (your own recordings)
    lalm-interp bench show DIR
"""

from __future__ import annotations

from . import count

import argparse
import sys
from collections import Counter


def register(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser("bench", help="build / inspect a spoken knowledge benchmark",
                              description="Build and inspect spoken knowledge benchmarks "
                                          "(docs/usage/benchmark.md).")
    sub = p.add_subparsers(dest="bench_command", metavar="ACTION")
    b = sub.add_parser("build", help="synthesise a benchmark into a folder (resumable)")
    b.add_argument("--source", choices=("counterfact", "known1000"), required=True)
    b.add_argument("--data", default=None, help="dataset file (default: the shipped subset)")
    b.add_argument("--limit", type=count(), default=500, help="number of facts (default 500)")
    b.add_argument("--renditions", type=count(), default=3,
                   help="how many default renditions per prompt (default 3)")
    b.add_argument("--rendition", action="append", default=None, metavar="R",
                   help="explicit rendition, e.g. en-us+m3:r175:p50 (repeatable; overrides "
                        "--renditions)")
    b.add_argument("--forms", default=",".join(("prompt", "subject", "relation", "paraphrase",
                                                "neighbourhood")),
                   help="comma-separated item forms (default: all five)")
    b.add_argument("--max-neighbours", type=int, default=None,
                   help="neighbourhood prompts per fact (default: all)")
    b.add_argument("--out", required=True, help="benchmark folder")
    b.add_argument("--workers", type=count(), default=2, help="synthesis processes (default 2)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--max-seconds", type=float, default=None, metavar="S",
                   help="leave out (and count) items whose clip is longer than S seconds, e.g. 3 "
                        "for the organism's window, 30 for Qwen2-Audio (default: no limit)")
    b.set_defaults(func=_build)
    im = sub.add_parser(
        "import", help="build a benchmark from your own recordings (a manifest of files)",
        description="Build a benchmark folder from recordings listed in a CSV/JSONL manifest "
                    "(columns audio, text, subject, target; optional target_new, words). Audio "
                    "at any rate / channel count is resampled to 16 kHz mono. "
                    "Docs: docs/usage/recordings.md.",
        epilog="example: lalm-interp bench import --manifest my.csv --out bench/ "
               "&& lalm-interp trace run --bench bench/ ...")
    im.add_argument("--manifest", required=True, help="CSV or JSONL manifest")
    im.add_argument("--out", required=True, help="benchmark folder to write")
    im.add_argument("--words", default=None, metavar="FILE",
                    help="word times (CSV word,start,end keyed by file stem / JSON / TextGrid or "
                         "a folder of TextGrids); default: the manifest's 'words' column")
    im.add_argument("--max-seconds", type=float, default=None, metavar="S",
                    help="leave out (and count) clips longer than S seconds (default: no limit)")
    im.add_argument("--no-progress", action="store_true", help="no progress bar")
    im.set_defaults(func=_import)
    s = sub.add_parser("show", help="counts, durations and a few items of a benchmark")
    s.add_argument("dir")
    s.add_argument("-n", type=count(), default=5, help="items to print (default 5)")
    s.add_argument("--rejected", type=int, default=3, help="rejections to print (default 3)")
    s.set_defaults(func=_show)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _build(args: argparse.Namespace) -> int:
    from ...bench.builder import build
    from ...bench.datasets import load_facts

    facts = load_facts(args.source, args.data, limit=args.limit)
    report = build(facts, args.out, renditions=args.rendition or args.renditions,
                   forms=[f.strip() for f in args.forms.split(",") if f.strip()],
                   max_neighbours=args.max_neighbours, workers=args.workers, source=args.source,
                   progress=not args.no_progress, max_seconds=args.max_seconds)
    return _report(report, args.out)


def _report(report, out) -> int:  # noqa: ANN001
    print(report.summary())
    for r in report.rejected[:5]:
        print(f"  rejected {r.item_id}: {r.reason.splitlines()[0]}")
    if len(report.rejected) > 5:
        print(f"  … {len(report.rejected) - 5} more in {out}/rejected.jsonl")
    return 0


def _import(args: argparse.Namespace) -> int:
    from ...bench.builder import import_recordings

    report = import_recordings(args.manifest, args.out, words=args.words,
                               max_seconds=args.max_seconds, progress=not args.no_progress)
    return _report(report, args.out)


def _show(args: argparse.Namespace) -> int:
    import numpy as np

    from ...bench.store import Benchmark

    bench = Benchmark.open(args.dir)
    m = bench.meta
    print(f"{bench.root}: {len(bench.facts)} facts, {len(bench)} items, {len(bench.rejected)} "
          f"rejected (source {m.get('source') or '?'}, built {m.get('built')})")
    print(f"backend: {m.get('backend')}; aligner: {m.get('aligner')}")
    print(f"renditions: {', '.join(m.get('renditions', []))}")
    forms = Counter(it.form for it in bench)
    print("items per form: " + ", ".join(f"{k} {v}" for k, v in sorted(forms.items())))
    if len(bench):
        d = np.array([it.duration_s for it in bench])
        print(f"durations: total {d.sum() / 60:.1f} min, mean {d.mean():.2f} s, "
              f"min {d.min():.2f} s, max {d.max():.2f} s")
    for it in list(bench)[: args.n]:
        span = it.subject_span_s
        sub = (f" subject words {it.subject_word_range} {span[0]:.2f}–{span[1]:.2f} s"
               if span else "")
        print(f"- {it.item_id}: {it.text!r} → {it.target_true!r}"
              f"{f' (new {it.target_new!r})' if it.target_new else ''}; {it.duration_s:.2f} s;"
              f"{sub}")
        print("    " + " ".join(f"{w}[{s:.2f}]" if s is not None else f"{w}[?]"
                                for w, s, _ in it.words))
    for r in bench.rejected[: args.rejected]:
        print(f"! rejected {r.item_id}: {r.reason.splitlines()[0]}", file=sys.stdout)
    return 0
