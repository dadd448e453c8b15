"""``lalm-interp edit run``: edit every case of a benchmark with one editor and write the ES/PS/NS
result file (``OUT/result.json``). With ``--executor ray`` the cases are spread over workers
(``OUT/cases/``: one file per case; see docs/usage/scale-out.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from . import start


def set_hparam(hp: Any, key: str, text: str) -> Any:
    """A copy of dataclass ``hp`` with ``key`` (dotted for nested: ``audio.steps``) set from ``text``
    (parsed as JSON when possible: numbers, true/false, null, lists → tuples)."""
    from lalm_interp.editors import EditorError

    head, _, rest = key.partition(".")
    names = {f.name for f in dataclasses.fields(hp)}
    if head not in names:
        raise EditorError(f"unknown hyper-parameter {key!r}; {type(hp).__name__} has {sorted(names)}.")
    if rest:
        return dataclasses.replace(hp, **{head: set_hparam(getattr(hp, head), rest, text)})
    try:
        val = json.loads(text)
    except json.JSONDecodeError:
        val = text
    if isinstance(val, list):
        val = tuple(val)
    return dataclasses.replace(hp, **{head: val})


def key_corpus(args: Any, bench: Any, say) -> Any:
    """The statistics corpus: LibriSpeech (``--librispeech``) or the synthesised fallback, built
    from facts outside the benchmark (so no edited fact is protected). Shared by ``stats run``, so
    both commands name the corpus (and key its statistics) the same way."""
    from lalm_interp.bench.corpus import load_librispeech, open_corpus, synthesise_corpus
    from lalm_interp.bench.datasets import load_facts
    from lalm_interp.editors import KeyCorpus

    if args.librispeech:
        utts = load_librispeech(args.librispeech, limit=args.corpus_n)
        return KeyCorpus(f"librispeech:{Path(args.librispeech).name}:{len(utts)}", utts)
    exclude = sorted(bench.facts)
    tag = hashlib.sha256(json.dumps(exclude).encode()).hexdigest()[:8]
    folder = Path(args.corpus or Path(args.cache or "cache") / f"protected_corpus-{args.corpus_n}-{tag}").resolve()
    if (folder / "corpus.jsonl").is_file():
        utts = open_corpus(folder)
    else:
        say(f"synthesising the protected corpus ({args.corpus_n} sentences) into {folder}")
        facts = load_facts("counterfact") + load_facts("known1000")
        utts = synthesise_corpus(folder, n=args.corpus_n, facts=facts, exclude=exclude)
    return KeyCorpus(f"synth:{len(utts)}:{tag}", utts)


def make_editor(args: Any) -> Any:
    """The editor ``--method``, ``--site`` and ``--hparam`` describe."""
    from lalm_interp.editors import get

    cls = get(args.method)
    hp = cls.HParams()
    for kv in args.hparam or []:
        k, _, v = kv.partition("=")
        hp = set_hparam(hp, k.strip(), v.strip())
    return cls(args.site if len(args.site) > 1 else args.site[0], hp)


def run(args) -> int:
    from lalm_interp.bench import Benchmark
    from lalm_interp.cache import Store
    from lalm_interp.editors import EditContext
    from lalm_interp.evaluation import cases_from_benchmark, run as run_eval
    from lalm_interp.executors import from_cli, needs_stats

    say = start(args)
    editor = make_editor(args)
    bench = Benchmark.open(args.bench)
    cases = cases_from_benchmark(bench, word=args.word, rendition=args.rendition)
    store = Store(args.cache) if args.cache else Store()
    acc = {"accumulate": True, "reset": False, None: None}[args.mode]
    meta = {"model": str(args.model), "bench": str(Path(args.bench).resolve()), "word": args.word,
            "known_only": bool(args.known_only), "targets": args.targets}
    executor = from_cli(args, str(args.model))
    if executor is not None:  # the workers load the model; the driver schedules and merges
        with executor:
            res = run_on_executor(args, executor, editor, bench, cases, store, acc, meta, say)
    else:
        from lalm_interp.known import first_token_scores
        from lalm_interp.loading import load

        loaded = load(args.model)
        model, processor, adapter = loaded
        editor.resolve_sites(adapter)  # fail early on a bad site
        if args.known_only:
            s = first_token_scores(model, processor, adapter, [c.request.prompt for c in cases], target="target")
            cases = [c for c, ok in zip(cases, s.correct) if ok]
        cases = select_targets(args, cases)
        if args.limit:
            cases = cases[: args.limit]
        say(f"{len(cases)} cases, method {args.method}, sites {editor.site_spec}")
        corpus = key_corpus(args, bench, say) if needs_stats(editor) else None
        ctx = EditContext(model, processor, adapter, store=store, corpus=corpus)
        meta.update(model_source=loaded.source, fingerprint=ctx.fingerprint,
                    corpus=corpus.id if corpus is not None else None)
        res = run_eval(editor, ctx, cases, accumulate=acc, meta=meta, progress=say)
    path = res.save(args.out)
    s, b = res.summary, res.baseline
    print(f"{res.mod} {res.label}: Score {s['Score']} ES {s['ES']} PS {s['PS']} NS {s['NS']} "
          f"(unedited: ES {b['ES']} PS {b['PS']} NS {b['NS']}); wrote {path}")
    return 0


def select_targets(args: Any, cases: list) -> list:
    """``--targets produced``: keep cases whose target_new is the true object of another case
    (with ``--known-only``: an answer the model gives); see docs/usage/evaluation.md."""
    if args.targets != "all":
        from lalm_interp.evaluation import with_produced_targets

        cases = with_produced_targets(cases)
    if not cases:
        from lalm_interp.editors import EditorError

        raise EditorError(f"no edit cases left in {args.bench} after --known-only={bool(args.known_only)} and "
                          f"--targets={args.targets}; speak more facts into the benchmark or drop a filter.")
    return cases


def run_on_executor(args: Any, executor: Any, editor: Any, bench: Any, cases: list, store: Any,
                    acc: bool | None, meta: dict[str, Any], say) -> Any:
    """``edit run --executor ray``: the known filter, the key statistics and the edit cases run on
    the executor's workers (see docs/usage/scale-out.md); returns the merged ``RunResult``."""
    from lalm_interp.executors import evaluate_sharded, known_sharded, needs_stats
    from lalm_interp.executors.evaluation import model_info
    from lalm_interp.loading import resolve

    say(f"starting {executor!r}")
    info = executor.map(model_info, [{"editor": editor}])[0]  # a bad site fails here, on a worker
    if args.known_only:
        ok = known_sharded(executor, [c.request.prompt for c in cases])
        cases = [c for c, k in zip(cases, ok) if k]
    cases = select_targets(args, cases)
    if args.limit:
        cases = cases[: args.limit]
    say(f"{len(cases)} cases, method {args.method}, sites {editor.site_spec}")
    corpus = key_corpus(args, bench, say) if needs_stats(editor) else None
    source = args.model if args.model == "tiny-random" else resolve(args.model)[0]
    meta.update(model_source=source, fingerprint=info["fingerprint"], corpus=corpus.id if corpus is not None else None)
    return evaluate_sharded(executor, editor, cases, args.out, accumulate=acc, store=store, corpus=corpus,
                            fingerprint=info["fingerprint"], meta=meta, progress=say)


def register(sub) -> None:
    p = sub.add_parser("edit", help="knowledge editing: run an editor over a benchmark")
    s = p.add_subparsers(dest="edit_command", metavar="ACTION")
    r = s.add_parser("run", help="edit each benchmark case and score ES/PS/NS before and after")
    r.add_argument("--model", required=True, help="'organism', a checkpoint folder or a hub id")
    r.add_argument("--bench", required=True, help="benchmark folder (lalm-interp bench build)")
    r.add_argument("--method", required=True, help="editor name: rome, crossmodal, alphaedit, crossmodal-alphaedit, finetune")
    r.add_argument("--site", action="append", required=True,
                   help="site(s) to edit, e.g. audio.layers.1 (= audio.layers.1.mlp.down), text.layers.0:2; repeat for cross-modal")
    r.add_argument("--word", default="last", choices=["first", "last", "subject"], help="subject word the key is taken at")
    r.add_argument("--out", required=True, help="output folder (result.json; with --executor ray also cases/, resumable)")
    r.add_argument("--hparam", action="append", metavar="KEY=VALUE", help="override a hyper-parameter (dotted for nested: audio.steps=5)")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--accumulate", dest="mode", action="store_const", const="accumulate",
                      help="keep every edit (sequential editing); default for multi-layer editors")
    mode.add_argument("--reset", dest="mode", action="store_const", const="reset",
                      help="revert after every case; default for single-layer editors")
    r.set_defaults(mode=None)
    r.add_argument("--limit", type=int, default=None, help="at most this many cases")
    r.add_argument("--rendition", default=None, help="rendition of the edit prompts (default: the benchmark's first)")
    r.add_argument("--known-only", action="store_true", help="keep only cases whose true object is the model's top-1")
    r.add_argument("--targets", choices=["all", "produced"], default="all",
                   help="'produced': keep cases whose target_new is the true object of another (known) case "
                        "— an answer the model gives; audio-side edits cannot reach others on small models")
    r.add_argument("--cache", default=None, help="activation cache root for key statistics (default: $LALM_INTERP_CACHE or ./cache)")
    r.add_argument("--corpus", default=None, help="folder of the synthesised protected corpus (made if missing)")
    r.add_argument("--corpus-n", type=int, default=200, help="utterances in the statistics corpus (paper: 5000)")
    r.add_argument("--librispeech", default=None, help="LibriSpeech split folder to use as the corpus instead")
    r.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    r.add_argument("--quiet", action="store_true")
    from lalm_interp.executors import add_cli_options

    add_cli_options(r)
    r.set_defaults(func=run)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])
