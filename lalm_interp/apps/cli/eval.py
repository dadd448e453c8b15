"""``lalm-interp eval table``: the paper's Table-1 (Mod., Method, Score, ES, PS, NS) from result files."""

from __future__ import annotations


def table(args) -> int:
    from lalm_interp.evaluation import load_result, table as make_table

    runs = [r for group in args.runs for r in str(group).split(",") if r.strip()]  # a,b or a b (shell globs)
    print(make_table([load_result(r) for r in runs]))
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="editing evaluation tables")
    s = p.add_subparsers(dest="eval_command", metavar="ACTION")
    t = s.add_parser("table", help="print a Markdown table (Mod., Method, Score, ES, PS, NS) of edit runs")
    t.add_argument("--runs", nargs="+", required=True, help="folders (or result.json files) written by `edit run`: comma-separated, or a shell glob")
    t.set_defaults(func=table)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])
