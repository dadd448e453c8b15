"""``lalm-interp info``: versions, adapters, cache root."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("LALM_INTERP_CACHE") or "cache").resolve()


def run(args) -> int:
    import importlib.metadata as md

    import lalm_interp
    from lalm_interp import adapters
    from lalm_interp.loading import MODELS

    print(f"lalm-interp {lalm_interp.__version__}")
    for pkg in ("torch", "transformers", "nnsight", "xarray", "h5py", "numpy"):
        try:
            print(f"  {pkg:<13}{md.version(pkg)}")
        except md.PackageNotFoundError:
            print(f"  {pkg:<13}(not installed)")
    print("adapters:")
    for name, spec in adapters.available().items():
        print(f"  {name:<13}model types {', '.join(spec.model_types)}; {spec.hf_class}")
    print("registered models (--model NAME):")
    for name, entry in MODELS.items():
        where = ("" if entry.folder is None
                 else f"; {'present' if (entry.folder / 'config.json').exists() else 'not shipped'}")
        print(f"  {name:<20}{entry.description}{where}")
    print(f"cache root: {cache_root(getattr(args, 'cache', None))}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="versions, available adapters, registered models, cache root")
    p.add_argument("--cache", default=None, help="cache root (default: $LALM_INTERP_CACHE or ./cache)")
    p.set_defaults(func=run)
