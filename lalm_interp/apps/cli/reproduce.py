"""``lalm-interp reproduce {figure2,table1,table2} --model M [--data PATH] --out DIR``."""

from __future__ import annotations

import json

from . import count


def int_list(text: str) -> list[int]:
    """``1,2,3`` → ``[1, 2, 3]`` (list options are comma-separated everywhere; spaces also work)."""
    import argparse

    try:
        return [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of layer numbers, e.g. 1,2,3") from None


def flat(groups) -> tuple[int, ...] | None:
    return tuple(x for g in groups for x in g) if groups else None


def run(args) -> int:
    from lalm_interp.apps.reproduce import ReproduceConfig, run as run_reproduce

    cfg = ReproduceConfig(
        config=args.config, model=args.model, data=args.data, source=args.source, out=args.out, limit=args.limit,
        renditions=args.renditions, n_trace=args.n_trace, k_known=args.k, m_random=args.m, seed=args.seed,
        window=args.window, word=args.word,
        audio_layers=flat(args.audio_layers), text_layers=flat(args.text_layers),
        preset=args.preset, librispeech=args.librispeech,
    )
    from lalm_interp.executors import from_cli

    with from_cli(args, args.model) as ex:  # tracing, key statistics and edit cases run on this executor
        print(json.dumps(run_reproduce(cfg, executor=ex), indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="the paper's Figure 2 / Table 1 / Table 2 protocol on a model")
    p.add_argument("config", choices=["figure2", "table1", "table2"])
    p.add_argument("--model", default="organism", help="'organism', a checkpoint dir, or an offline hub id")
    p.add_argument("--data", default=None, help="full dataset file (default: the shipped subset)")
    p.add_argument("--source", choices=["known1000", "counterfact"], default="known1000",
                   help="figure2's dataset (paper: known1000; the organism knows counterfact facts)")
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=count(), default=None, help="facts read from the dataset")
    p.add_argument("--renditions", type=count(), default=1)
    p.add_argument("--n-trace", type=count(), default=100, help="known facts traced")
    p.add_argument("--k", type=count(0), default=200, help="known facts in the edit set (paper: 200)")
    p.add_argument("--m", type=count(0), default=300, help="random facts in the edit set (paper: 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", type=int, default=10, help="restoration window, capped at the stack depth")
    p.add_argument("--word", choices=["first", "last"], default="last")
    p.add_argument("--audio-layers", type=int_list, nargs="+", default=None,
                   help="audio layers to edit, comma-separated (e.g. 1,2,3); default: chosen by AIE")
    p.add_argument("--text-layers", type=int_list, nargs="+", default=None,
                   help="text layers to edit, comma-separated (e.g. 4,5,6); default: chosen by AIE")
    p.add_argument("--preset", default=None,
                   help="editor hyper-parameter preset (default: the model's own — organism for the organism, "
                        "paper otherwise; docs/editors/index.md#presets)")
    p.add_argument("--librispeech", default=None,
                   help="LibriSpeech split folder for the protected/statistics corpus (the paper's 5,000 "
                        "utterances); default: the synthesised fallback")
    from ._scaleout import add_cli_options

    add_cli_options(p)
    p.set_defaults(func=run)
