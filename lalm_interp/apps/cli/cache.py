"""``lalm-interp cache ls | show KEY | gc``: inspect and tidy an activation cache."""

from __future__ import annotations

import argparse

from ...cache import Store
from ...cache.layout import ENV_VAR


def register(subparsers: "argparse._SubParsersAction") -> None:
    parser = subparsers.add_parser(
        "cache",
        help="inspect and tidy the activation cache",
        description=f"Inspect and tidy an activation cache (root: --cache > ${ENV_VAR} > ./cache).",
    )
    sub = parser.add_subparsers(dest="cache_command", metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cache", metavar="DIR", default=None, help=f"cache root (default: ${ENV_VAR} or ./cache)")

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--experiment", default=None, help="only this experiment")
        p.add_argument("--run", default=None, help="only this run (e.g. clean, corrupt)")
        p.add_argument("--model", default=None, help="only this model name or fingerprint")
        p.add_argument("--dataset", default=None, help="only this dataset id")

    ls = sub.add_parser("ls", help="list experiments, runs and keys")
    common(ls)
    filters(ls)
    ls.add_argument("pattern", nargs="?", default=None, help="only keys matching this site pattern")
    ls.add_argument("--stats", action="store_true", help="also list cached key statistics")
    ls.set_defaults(func=_ls)

    show = sub.add_parser("show", help="describe one key or pattern across the cache")
    common(show)
    filters(show)
    show.add_argument("key", help="a site or site pattern, e.g. text.layers.5:15.mlp")
    show.set_defaults(func=_show)

    gc = sub.add_parser("gc", help="remove orphaned temp files; report corrupt shards",
                        description="Remove orphaned temp files and report corrupt shards. --check also reads "
                        "every dataset of every shard and statistics file, verifying checksums, and exits 1 "
                        "when any is damaged. Example: lalm-interp cache gc --check --quarantine")
    common(gc)
    gc.add_argument("--check", action="store_true",
                    help="read every dataset of every shard, verify checksums, report damage (exit 1 if any)")
    gc.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    gc.add_argument("--quarantine", action="store_true", help="move corrupt shards to <cache>/quarantine/")
    gc.set_defaults(func=_gc)

    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])


def _filters(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("experiment", "run", "model", "dataset") if getattr(args, k, None)}


def _open(args: argparse.Namespace) -> Store:
    """The store ``--cache`` names; a named root that is missing or not a folder is an error (a typo
    must not look like a clean, empty cache)."""
    from pathlib import Path

    from lalm_interp.cache import CacheError

    if args.cache is not None and not Path(args.cache).is_dir():
        what = "is a file, not a folder" if Path(args.cache).exists() else "does not exist"
        raise CacheError(f"--cache {args.cache!r} {what}; nothing to list or check.\n  fix: give the cache "
                         "root (the folder holding shards/ and stats/; default $LALM_INTERP_CACHE or ./cache)")
    return Store(args.cache)


def _ls(args: argparse.Namespace) -> int:
    store = _open(args)
    cat = store.catalog(**_filters(args))
    print(f"cache {store.root}")
    exps = store.experiments(**_filters(args))
    if not exps and not cat.corrupt:
        print("  (empty)")
    for e in exps:
        p = e.provenance
        print(f"{e.experiment}/{e.run}: {e.n_shards} shard(s), {e.n_examples} example(s); model={p.fingerprint} dataset={p.dataset or '-'}")
        for k in store.ls(args.pattern, experiment=e.experiment, run=e.run):
            shape = " ".join(f"{d}={n}" for d, n in zip(k.dims, k.shape))
            orig = f" (from {k.original_dtype})" if k.original_dtype != k.dtype else ""
            print(f"  {k.site:40s} {shape:40s} {k.dtype}{orig}")
    for c in cat.corrupt:
        print(f"CORRUPT {c.path}")
    if getattr(args, "stats", False):
        for s in store.stats():
            if "error" in s:
                print(f"stats CORRUPT {s['path']}")
            else:
                print(f"stats {s['site']} model={s['model']} corpus={s['corpus']} n={s['count']} d={s['dim']}")
    return 1 if cat.corrupt else 0


def _show(args: argparse.Namespace) -> int:
    store = _open(args)
    da = store.get(args.key, **_filters(args))
    sizes = " ".join(f"{d}={n}" for d, n in da.sizes.items())
    print(f"{da.name}  {sizes}  {da.dtype} (stored from {da.attrs.get('original_dtype')})  {da.nbytes / 2**20:.1f} MiB")
    if "layer" in da.dims:
        print(f"layers: {' '.join(map(str, da.layer.values.tolist()))}")
    print(f"experiments: {da.attrs['experiments']}  runs: {da.attrs['runs']}")
    for name in ("model", "revision", "weights_hash", "adapter_version", "dataset", "package_version"):
        if da.attrs.get(name):
            print(f"{name}: {da.attrs[name]}")
    print(f"coords: {', '.join(str(c) for c in da.coords)}")
    return 0


def _gc(args: argparse.Namespace) -> int:
    store = _open(args)
    report = store.gc(dry_run=args.dry_run, quarantine=args.quarantine, check=args.check)
    verb = "would remove" if args.dry_run else "removed"
    for p in report.removed:
        print(f"{verb} {p}")
    for p in report.kept_live:
        print(f"kept (writer still running) {p}")
    for p in report.corrupt:
        if report.quarantined or args.quarantine and not args.dry_run:
            continue
        print(f"corrupt (kept; use --quarantine to move aside) {p}")
    for d in report.damaged:
        for name, msg in d.damaged:
            why = "failed its checksum" if "checksum" in msg else "cannot be read"
            print(f"damaged {d.path}: dataset '{name}' {why}")
        if not (report.quarantined or args.quarantine and not args.dry_run):
            print("  (kept; use --check --quarantine to move it aside, then re-run the writer to recompute it)")
    for p in report.quarantined:
        print(f"quarantined {p}")
    summary = f"{len(report.removed)} temp file(s) {verb}, {len(report.corrupt)} corrupt shard(s)"
    if args.check:
        summary += (f"; checked {report.checked} file(s): {len(report.damaged)} damaged, "
                    f"{len(report.unverified)} without checksums (written before checksums; readable, unverified)")
    print(summary)
    if args.check and (report.damaged or report.corrupt):
        return 1
    return 0
