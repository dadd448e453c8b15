"""``lalm-interp demo [--quick] [--out DIR]``: the whole pipeline on the embedded organism.

Ends with a short, rounded summary (what we found, Table 1, stage times) and the outputs' names;
the full numbers are in ``results.json``."""

from __future__ import annotations


def run(args) -> int:
    from lalm_interp.apps.demo import DemoConfig, run as run_demo

    kw = {"out": args.out, "model": args.model}
    cfg = DemoConfig.quick(**kw) if args.quick else DemoConfig(**kw)
    edit_fn = None
    try:
        from lalm_interp.apps.demo_edits import table1 as edit_fn  # noqa: F811
    except ImportError:  # editors not installed in this build
        pass
    summary = run_demo(cfg, edit_fn=edit_fn)
    print(summary_text(summary))
    print(f"\nwrote {cfg.out}/index.html, {cfg.out}/table1.md, {cfg.out}/results.json, "
          f"{cfg.out}/trace/ (aie.nc, figure2.png), {cfg.out}/heatmap_spectrogram.png")
    return 0


def summary_text(summary: dict) -> str:
    """The closing summary, numbers rounded for reading (``Score 63.42``, ``P_clean 0.878``)."""
    from lalm_interp.apps.demo import span_text
    from lalm_interp.apps.report import fmt

    tr = summary["trace"]
    lines = [f"facts {summary['facts']}, known {summary['known']}, traced {tr['examples']}: "
             f"P_clean {fmt(tr['p_clean'], 3)}, P_corrupt {fmt(tr['p_corrupt'], 3)}"]
    for fam, p in tr.get("peaks", {}).items():
        lines.append(f"  peak {fam:<12} layer {p['layer']} at {span_text(p['span'])} (AIE {fmt(p['aie'])})")
    rows = summary.get("table1_rows") or []
    if rows:
        lines.append("Table 1:")
        for r in rows:
            lines.append(f"  {r['modality']:<6}{r['method']:<13}Score {fmt(r['score']):>6}  ES {fmt(r['es']):>6}  "
                         f"PS {fmt(r['ps']):>6}  NS {fmt(r['ns']):>6}" + (
                             f"  n={r['n_cases']}" if r.get("n_cases") is not None else ""))
    st = summary.get("stages_s", {})
    lines.append("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in st.items()))
    if summary.get("found"):
        lines.append("\n" + summary["found"])
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the embedded organism (offline, minutes)")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    p.add_argument("--model", default="organism", help="'organism' or a checkpoint directory")
    p.add_argument("--quick", action="store_true", help="reduced sizes that still touch every stage")
    p.set_defaults(func=run)
