"""The ``lalm-interp`` command. Each subcommand lives in its own module of this package and exposes
``register(subparsers)``; modules are discovered here, so adding a subcommand touches one file.

Every (sub)command's ``--help`` shows a one-line description and an example: a module may set its
own (``description=`` / ``epilog=``); otherwise :data:`HELP` supplies them here, applied after
registration (add a row when adding a subcommand — ``tests/hardening/test_cli_help.py`` checks)."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from ...errors import LalmInterpError

HELP: dict[str, tuple[str, str]] = {
    # command path: (one-line description, example)
    "info": ("Print the installed versions, the registered adapters, the embedded models and the cache root.",
             "lalm-interp info"),
    "smoke": ("Self-check in seconds: a tiny random Qwen2-Audio, a no-op nnsight trace equal to the HF forward.",
              "lalm-interp smoke"),
    "demo": ("Run the whole pipeline (speak facts, known filter, tracing, Table-1 editors, HTML report) on the "
             "embedded organism, offline.",
             "lalm-interp demo --quick --out demo_out/"),
    "reproduce": ("Run the paper's Figure 2 / Table 1 / Table 2 protocol on a model and write its tables and plots.",
                  "lalm-interp reproduce figure2 --model organism --source counterfact --out fig2/"),
    "bench": ("Build and inspect spoken knowledge benchmarks (facts spoken with espeak-ng, word timings included).",
              "lalm-interp bench build --source counterfact --limit 50 --out bench/"),
    "bench build": ("Speak a fact set (CounterFact / Known-1000) into a benchmark folder with audio, word timings "
                    "and a manifest; resumable.",
                    "lalm-interp bench build --source counterfact --limit 50 --renditions 3 --out bench/"),
    "bench show": ("Print a benchmark's counts, durations and a few items.",
                   "lalm-interp bench show bench/"),
    "trace": ("Speech-aware causal tracing: corrupt the spoken subject, restore layers, measure the indirect effect.",
              "lalm-interp trace run tracing_specs/figure2.py --model organism --bench bench/ --out traces/"),
    "trace run": ("Run a tracing spec (tracing_specs/*.py) over a spoken benchmark; writes per-example results, "
                  "aie.nc and plots; resumable.",
                  "lalm-interp trace run tracing_specs/figure2.py --model organism --bench bench/ --out traces/"),
    "edit": ("Knowledge editing: run an editor over a benchmark's edit cases and score ES / PS / NS.",
             "lalm-interp edit run --model organism --bench bench/ --method rome --site text.layers.1 --out edits/rome"),
    "edit run": ("Edit each benchmark case with one editor at the given sites and score ES / PS / NS before and "
                 "after; resumable.",
                 "lalm-interp edit run --model organism --bench bench/ --method rome --site text.layers.1 "
                 "--out edits/rome"),
    "eval": ("Editing evaluation tables from finished edit runs.",
             "lalm-interp eval table --runs edits/*"),
    "eval table": ("Print a Markdown table (Mod., Method, Score, ES, PS, NS) of finished edit runs.",
                   "lalm-interp eval table --runs edits/rome edits/alphaedit"),
    "stats": ("Key statistics (second moments E[kk^T]) that ROME / AlphaEdit read, computed and cached ahead.",
              "lalm-interp stats run --model organism --bench bench/ --site text.layers.1"),
    "stats run": ("Compute and cache the key second moments at editing sites (what edit run reads).",
                  "lalm-interp stats run --model organism --bench bench/ --site text.layers.1"),
    "cache": ("Inspect and tidy an activation cache (HDF5/xarray shards).",
              "lalm-interp cache ls"),
    "cache ls": ("List the cache's experiments, runs and keys.",
                 "lalm-interp cache ls 'text.layers.*' --stats"),
    "cache show": ("Describe one key or pattern across the cache (shapes, runs, provenance).",
                   "lalm-interp cache show text.layers.1.mlp.down@in"),
    "cache gc": ("Remove orphaned temp files and report (or quarantine) corrupt shards.",
                 "lalm-interp cache gc --check --dry-run"),
    "organism": ("Train or evaluate the embedded tiny Qwen2-Audio (the organism).",
                 "lalm-interp organism eval --model organism"),
    "organism train": ("Train the organism from its recipe and export a checkpoint (minutes on 2 CPU cores).",
                       "lalm-interp organism train --out my-organism/ --minutes 5"),
    "organism eval": ("Top-1 accuracy of an organism checkpoint on training voices, held-out voices and paraphrases.",
                      "lalm-interp organism eval --model organism"),
}


def count(minimum: int = 1):
    """An argparse type for counts (``--limit``, ``-n``, ``--workers``…): an integer >= ``minimum``.
    ``--limit 0`` used to mean "no limit" in one command and "one" in another."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"{n} is below {minimum}; give a count of at least {minimum} "
                                             "(leave the option out for no limit)")
        return n

    parse.__name__ = "count"
    return parse


def start(args: argparse.Namespace):
    """Common start of a long-running subcommand: torch threads from ``--threads`` (0 keeps torch's
    default) and a ``say(msg)`` that writes progress to stderr unless ``--quiet``."""
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)

    def say(msg: str) -> None:
        if not getattr(args, "quiet", False):
            print(msg, file=sys.stderr, flush=True)

    return say


def quiet_libraries() -> None:
    """Keep libraries' own noise out of normal output: no weight-loading / hub download progress
    bars (``HF_HUB_DISABLE_PROGRESS_BARS=1`` unless the user set it; transformers reads it at
    import, and is told directly when already imported). Our own progress bars (synthesis,
    tracing, editing) stay, on stderr. Ray's banners are handled where Ray starts
    (``executors/ray_executor.py``)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] not in ("0", "", "false", "False") and "transformers" in sys.modules:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()


def _version() -> str:
    from ..._version import __version__

    return f"lalm-interp {__version__}"


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Yield ``(path, parser)`` for every (nested) subcommand, e.g. ``(("bench", "build"), p)``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from subcommands(sub, path + (name,))


def _describe(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand a description and an example (from :data:`HELP` where its module set
    none), shown verbatim by ``--help``."""
    for path, sub in subcommands(parser):
        key = " ".join(path)
        desc, example = HELP.get(key, (None, None))
        if not sub.description and desc:
            sub.description = desc
        if example and "lalm-interp " not in (sub.epilog or ""):
            sub.epilog = ((sub.epilog.rstrip() + "\n\n") if sub.epilog else "") + f"example:\n  {example}"
        if sub.formatter_class is argparse.HelpFormatter:
            sub.formatter_class = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lalm-interp",
        description="Interpretability and knowledge editing for large audio-language models.",
        epilog="examples:\n  lalm-interp demo --quick\n  lalm-interp bench build --source counterfact --limit 50 "
               "--out bench/\n  lalm-interp COMMAND --help\n\ndocs: README.md, docs/quickstart.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    _describe(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except LalmInterpError as err:
        print(f"lalm-interp: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
