"""``lalm-interp demo [--quick] [--out DIR]``: the whole pipeline on the embedded organism."""

from __future__ import annotations

import json


def run(args) -> int:
    from lalm_interp.demo import DemoConfig, run as run_demo

    kw = {"out": args.out, "model": args.model}
    cfg = DemoConfig.quick(**kw) if args.quick else DemoConfig(**kw)
    edit_fn = None
    try:
        from lalm_interp.demo_edits import table1 as edit_fn  # noqa: F811
    except ImportError:  # editors not installed in this build
        pass
    summary = run_demo(cfg, edit_fn=edit_fn)
    print(json.dumps({k: summary[k] for k in ("facts", "known", "trace", "stages_s")}, indent=2))
    print(f"\nwrote {cfg.out}/index.html, {cfg.out}/table1.md, {cfg.out}/results.json, "
          f"{cfg.out}/trace/ (aie.nc, figure2.png), {cfg.out}/heatmap_spectrogram.png")
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the embedded organism (offline, minutes)")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    p.add_argument("--model", default="organism", help="'organism' or a checkpoint directory")
    p.add_argument("--quick", action="store_true", help="reduced sizes that still touch every stage")
    p.set_defaults(func=run)
