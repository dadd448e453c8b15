"""Scale-out executors: run tracing shards, key-statistics chunks and evaluation (edit-case)
shards on one process (``local``, the default) or on a pool of Ray actors that each load the model
once (``ray``, the optional ``lalm-interp[ray]`` extra). Results are atomic files, so failed shards are retried and restarted
jobs resume without recomputing anything. See ``docs/usage/scale-out.md``.

    from lalm_interp.executors import RayExecutor
    from lalm_interp.tracing.run import run_experiment

    with RayExecutor("organism", workers=4) as ex:
        agg = run_experiment(None, None, None, prompts, EXPERIMENT, "out/", executor=ex)

Importing this package never imports Ray.
"""

from .base import (
    FAULT_ENV,
    Executor,
    ExecutorError,
    InjectedFailure,
    LocalExecutor,
    current,
    load_state,
    make_executor,
    using,
)
from .evaluation import evaluate_sharded, known_sharded, needs_stats
from .stats import key_stats_sharded
from .tracing import open_examples, trace_sharded


def __getattr__(name: str):
    if name == "RayExecutor":
        from .ray_executor import RayExecutor

        return RayExecutor
    raise AttributeError(name)


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        import argparse
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return int(text)


def add_cli_options(parser) -> None:
    """``--executor local|ray --workers N --address ADDR --shard-size N`` on a subcommand."""
    g = parser.add_argument_group("scale-out (docs/usage/scale-out.md)")
    g.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: one Ray actor per GPU/CPU worker")
    g.add_argument("--workers", type=_positive, default=None,
                   help="Ray actors (default: the cluster's GPUs, else its CPUs)")
    g.add_argument("--address", default=None,
                   help="existing Ray cluster ('auto' or ray://HOST:10001); default: start a local one")
    g.add_argument("--shard-size", type=_positive, default=None,
                   help="examples per tracing shard, or edit cases per evaluation shard (default: ~4 "
                        "shards per worker, at most 16); statistics use two corpus chunks per worker")


def from_cli(args, model: str):
    """The executor the CLI options ask for (``None`` for the default in-process path)."""
    if getattr(args, "executor", "local") == "local":
        return None
    ex = make_executor(args.executor, model=model, workers=args.workers, address=args.address)
    ex.shard_size = getattr(args, "shard_size", None)  # tracing and evaluation shards (also inside `reproduce`)
    return ex


__all__ = [
    "FAULT_ENV",
    "Executor",
    "ExecutorError",
    "InjectedFailure",
    "LocalExecutor",
    "RayExecutor",
    "add_cli_options",
    "current",
    "evaluate_sharded",
    "from_cli",
    "key_stats_sharded",
    "known_sharded",
    "load_state",
    "make_executor",
    "needs_stats",
    "open_examples",
    "trace_sharded",
    "using",
]
