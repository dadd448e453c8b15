"""``lalm-interp edit run``: edit every case of a benchmark with one editor and write the ES/PS/NS
result file (``OUT/result.json``). With ``--executor ray`` the cases are spread over workers
(``OUT/cases/``: one file per case; see docs/usage/scale-out.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence


from . import count, start


def set_hparam(hp: Any, key: str, text: str) -> Any:
    """A copy of dataclass ``hp`` with ``key`` (dotted for nested: ``audio.steps``) set from ``text``
    (parsed as JSON when possible: numbers, true/false, null, lists → tuples)."""
    from lalm_interp.editors import EditorError

    head, _, rest = key.partition(".")
    names = {f.name for f in dataclasses.fields(hp)}
    if head not in names:
        raise EditorError(f"unknown hyper-parameter {key!r};{closest(head, names)} {type(hp).__name__} has "
                          f"{sorted(names)}. Docs: docs/usage/evaluation.md#sites-and-presets.")
    if rest:
        return dataclasses.replace(hp, **{head: set_hparam(getattr(hp, head), rest, text)})
    try:
        val = json.loads(text)
    except json.JSONDecodeError:
        val = text
    if isinstance(val, list):
        val = tuple(val)
    want = str(next(f.type for f in dataclasses.fields(hp) if f.name == head))
    want = getattr(want, "__name__", want)
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str)}.get(want)
    if ok is not None and not ok(val):
        raise EditorError(f"--hparam {key}={text}: {head} takes {'an' if want == 'int' else 'a'} {want}, got "
                          f"{text!r}. e.g. --hparam steps=20, --hparam lr=0.5, --hparam cov=identity, "
                          "--hparam text.refine_steps=0. Docs: docs/usage/evaluation.md#sites-and-presets.")
    if want == "float":
        val = float(val)
    return dataclasses.replace(hp, **{head: val})


def key_corpus(args: Any, bench: Any, say) -> Any:
    """The statistics corpus: LibriSpeech (``--librispeech``) or the synthesised fallback, built
    from facts outside the benchmark (so no edited fact is protected). Shared by ``stats run``, so
    both commands name the corpus (and key its statistics) the same way."""
    from lalm_interp.bench.corpus import (LIBRISPEECH_N, SYNTH_N, corpus_id, load_librispeech, open_corpus,
                                          synthesise_corpus)
    from lalm_interp.bench.datasets import load_facts
    from lalm_interp.editors import KeyCorpus

    if args.librispeech:  # the paper's protected corpus: 5,000 utterances unless --corpus-n says otherwise
        utts = load_librispeech(args.librispeech, limit=args.corpus_n or LIBRISPEECH_N)
        return KeyCorpus(corpus_id(utts, f"librispeech:{Path(args.librispeech).name}"), utts)
    n = args.corpus_n or SYNTH_N
    exclude = sorted(bench.facts)
    tag = hashlib.sha256(json.dumps(exclude).encode()).hexdigest()[:8]
    folder = Path(args.corpus or Path(args.cache or "cache") / f"protected_corpus-{n}-{tag}").resolve()
    if (folder / "corpus.jsonl").is_file():
        utts = open_corpus(folder)
    else:
        say(f"synthesising the protected corpus ({n} sentences) into {folder}")
        facts = load_facts("counterfact") + load_facts("known1000")
        utts = synthesise_corpus(folder, n=n, facts=facts, exclude=exclude)
    # named by its contents: statistics are shared only by corpora holding the same utterances
    return KeyCorpus(corpus_id(utts), utts)


def add_corpus_options(parser: Any) -> None:
    """``--corpus`` / ``--corpus-n`` / ``--librispeech``: what :func:`key_corpus` reads (``edit run``
    and ``stats run``)."""
    parser.add_argument("--corpus", default=None, help="folder of the synthesised protected corpus (made if missing)")
    parser.add_argument("--corpus-n", type=count(), default=None,
                   help="utterances in the statistics corpus (default: 5000 LibriSpeech as in the paper, or 600 "
                        "synthesised, docs/editors/protected-corpus.md)")
    parser.add_argument("--librispeech", default=None, help="LibriSpeech split folder to use as the corpus instead")


def closest(name: str, valid: Any) -> str:
    """`` Did you mean 'x'?`` for the valid name closest to ``name`` (empty when none is close)."""
    import difflib

    m = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" Did you mean {m[0]!r}?" if m else ""


def editor_class(method: str) -> Any:
    """The registered editor ``--method`` names (the error lists the names and the closest one)."""
    from lalm_interp.editors import EditorError, available

    eds = available()
    if method not in eds:
        raise EditorError(f"no editor named {method!r}.{closest(method, eds)} Registered: {sorted(eds)}. "
                          "Add one (docs/patterns/add-an-editor.md) and register it.")
    return eds[method]


def make_editor(args: Any, sites: Any = None) -> Any:
    """The editor ``--method``, ``--site`` (or ``sites``), ``--preset`` and ``--hparam`` describe.
    ``--preset NAME`` is passed to ``lalm_interp.editors.make(..., preset=NAME)``; ``--hparam``
    overrides are applied on top of the preset's hyper-parameters."""
    from lalm_interp.editors import EditorError, make

    cls = editor_class(args.method)
    sites = sites if sites is not None else args.site
    spec = sites if len(sites) > 1 else sites[0]
    preset = getattr(args, "preset", None)
    if preset:
        editor = make(args.method, spec, preset=preset)
        hp = editor.hparams
    else:
        hp = cls.HParams()
    for kv in args.hparam or []:
        k, eq, v = kv.partition("=")
        if not eq or not k.strip():
            raise EditorError(f"--hparam {kv!r}: expected KEY=VALUE, e.g. --hparam steps=20 (JSON values; dotted "
                              "keys for nested fields). Docs: docs/usage/evaluation.md#sites-and-presets.")
        hp = set_hparam(hp, k.strip(), v.strip())
    return cls(spec, hp) if not preset else _with_hparams(editor, hp)


def model_preset(name: str) -> str:
    """The preset ``--model NAME`` asks for without loading it: ``organism`` for the organism (by
    name, or a folder whose ``manifest.json`` holds an organism recipe), else ``paper``: the same
    rule as :func:`lalm_interp.editors.presets.default_preset` on a loaded model."""
    from lalm_interp.editors import presets

    if str(name) == "organism" or presets.is_organism_checkpoint(str(name)):
        return presets.ORGANISM
    return presets.PAPER


def _with_hparams(editor: Any, hp: Any) -> Any:
    """``editor`` with hyper-parameters ``hp`` (an ``--hparam`` override on top of a preset),
    validated like a fresh editor's."""
    if hp is editor.hparams:
        return editor
    check = getattr(hp, "check", None)
    if check:
        check()
    editor.hparams = hp
    return editor


# ---------------------------------------------------------------------------- default sites
TWO_STREAMS_STREAMS = ("audio", "text")
"""The streams of the cross-modal editors (:data:`lalm_interp.plans.TWO_STREAMS`); the others edit one
(default: audio)."""


def auto_streams(method: str, site_args: Sequence[str] | None) -> tuple[str, ...] | None:
    """The streams whose layers are chosen automatically (``None``: the sites are explicit).
    ``--site auto`` / no ``--site``: audio and text for the cross-modal editors, audio for the others;
    ``--site audio.auto`` / ``--site text.auto``: that stream."""
    from lalm_interp import plans  # the editors (torch) load when the command runs, not for --help
    from lalm_interp.editors import EditorError

    if not site_args:
        return TWO_STREAMS_STREAMS if method in plans.TWO_STREAMS else ("audio",)
    autos = [s for s in site_args if s in ("auto", "audio.auto", "text.auto")]
    if not autos:
        return None
    if len(autos) != len(site_args):
        raise EditorError(f"--site {' '.join(site_args)}: mix of explicit sites and 'auto'; give explicit sites "
                          "only, or 'auto' / 'audio.auto' / 'text.auto' only. "
                          "Docs: docs/usage/evaluation.md#sites-and-presets.")
    if "auto" in autos:
        return TWO_STREAMS_STREAMS if method in plans.TWO_STREAMS else ("audio",)
    streams = tuple(dict.fromkeys(a.split(".")[0] for a in autos))
    if method in plans.TWO_STREAMS and len(streams) != 2:
        raise EditorError(f"{method} edits an audio and a text layer; --site {autos[0]} names one stream. Use "
                          "--site auto (both). Docs: docs/usage/evaluation.md#sites-and-presets.")
    if method not in plans.TWO_STREAMS and len(streams) != 1:
        raise EditorError(f"{method} edits one stream; choose --site audio.auto or --site text.auto. "
                          "Docs: docs/usage/evaluation.md#sites-and-presets.")
    return streams


def check_site_names(site_args: Sequence[str], adapter: Any) -> None:
    """A site that does not parse or that the adapter does not have: an error with the closest
    valid editing site (``audio.layers.N.mlp.down`` / ``text.layers.N.mlp.down``)."""
    from lalm_interp.editors import EditorError, normalise_site
    from lalm_interp.errors import LalmInterpError

    valid = [f"{st}.layers.{i}.mlp.down" for st in ("audio", "text") for i in range(adapter.n_layers(st))]
    short = [v.rsplit(".mlp.down", 1)[0] for v in valid]
    for s in site_args:
        try:
            adapter.expand([normalise_site(s)])
        except LalmInterpError as err:
            raise EditorError(f"--site {s!r}: {str(err).splitlines()[0].rstrip('.')}.{closest(s, valid + short)} "
                              f"Editing sites of this model: audio.layers.0..{adapter.n_layers('audio') - 1}, "
                              f"text.layers.0..{adapter.n_layers('text') - 1} (.mlp.down), or 'auto'. "
                              "Docs: docs/usage/evaluation.md#sites-and-presets.") from err


class _Depth:
    """The layer counts a worker reported (``worker_info``'s ``n_layers``), where
    :func:`lalm_interp.plans.figure2_window` reads them from an adapter."""

    def __init__(self, n_layers: dict[str, int]):
        self._n = dict(n_layers)

    def n_layers(self, stream: str) -> int:
        return self._n[stream]


def auto_layers(args: Any, executor: Any, info: dict[str, Any], cases: list, streams: Sequence[str],
                say) -> dict[str, list[int]]:
    """The paper's layer choice: trace ``--auto-n`` of the edit prompts with the Table-2 selection
    experiment (``plans.figure2_experiment``, MLP families of ``streams`` only) into
    ``OUT/site-auto/`` (resumable, on ``executor``), then take each stream's top-k MLP layers by AIE
    (``tracing.select.top_layers``) at the position the editors key at
    (``plans.layer_spans(word, keyed=True)``: audio at the last subject word — the first with
    ``--word first`` — text at the last token)."""
    from lalm_interp import plans  # the editors (torch) load when the command runs, not for --help
    from lalm_interp.tracing.run import run_experiment
    from lalm_interp.tracing.select import top_layers

    window = plans.figure2_window(_Depth(info["n_layers"]))
    exp = plans.figure2_experiment(window, streams=streams, kinds=("mlp",))
    prompts = [c.request.prompt for c in cases[: args.auto_n]]
    say(f"--site auto: tracing {len(prompts)} edit prompt(s) (window {window}) into {Path(args.out) / 'site-auto'}")
    agg = run_experiment(None, None, None, prompts, exp, Path(args.out) / "site-auto",
                         provenance={"model": str(args.model), "purpose": "edit run --site auto"},
                         progress=False, plots=False, executor=executor)
    k = plans.LAYERS_PER_STREAM.get(args.method, 1)
    spans = plans.layer_spans(args.word if args.word in ("first", "last") else "last", keyed=True)
    return {st: top_layers(agg, f"{st}.mlp", spans[st], min(k, info["n_layers"][st])) for st in streams}


def choose_sites(args: Any, executor: Any, info: dict[str, Any], cases: list, loaded_name: str,
                 say, meta: dict[str, Any]) -> list[str]:
    """``--site`` as given, or the default / ``auto`` sites (said on stderr; how they were chosen is
    ``meta["site_choice"]``: ``explicit``, ``default`` or ``auto``). ``info``: the model's
    ``worker_info`` (adapter name, layers per stream)."""
    from lalm_interp import plans  # the editors (torch) load when the command runs, not for --help
    streams = auto_streams(args.method, args.site)
    if streams is None:
        meta["site_choice"] = "explicit"
        return list(args.site)
    table = plans.DEFAULT_LAYERS.get(loaded_name) or plans.DEFAULT_LAYERS.get(info["adapter"])
    if not args.site and table is not None:
        sites = plans.sites(table, args.method, streams)
        meta["site_choice"] = "default"
        say(f"no --site: the documented default sites of {loaded_name if loaded_name in plans.DEFAULT_LAYERS else info['adapter']} "
            f"for {args.method}: {' '.join(sites)}")
        return sites
    if not args.site:
        say(f"no --site and no documented default sites for {loaded_name!r} (adapter {info['adapter']}): "
            "choosing them as --site auto does")
    sites = plans.sites(auto_layers(args, executor, info, cases, streams, say), args.method, streams)
    meta["site_choice"] = "auto"
    say(f"--site auto: {' '.join(sites)} (peak MLP AIE)")
    return sites


def fmt(x: Any) -> str:
    """A metric for reading: 2 decimals, '–' when missing."""
    return "–" if x is None else f"{x:.2f}"


def run(args) -> int:
    from lalm_interp.bench import Benchmark
    from lalm_interp.cache import Store
    from lalm_interp.evaluation import cases_from_benchmark
    from lalm_interp.executors import from_cli

    say = start(args)
    editor_class(args.method)  # a bad --method fails before anything loads
    if args.site:
        auto_streams(args.method, args.site)  # a bad mix of auto and explicit sites too
    if args.preset is None:  # the model's own preset (docs/editors/index.md#presets), never a silent default
        args.preset = model_preset(args.model)
    check_preset(args.method, args.preset)
    bench = Benchmark.open(args.bench)
    cases = cases_from_benchmark(bench, word=args.word, rendition=args.rendition)
    store = Store(args.cache) if args.cache else Store()
    acc = {"accumulate": True, "reset": False, None: None}[args.mode]
    meta = {"model": str(args.model), "bench": str(Path(args.bench).resolve()), "word": args.word,
            "known_only": bool(args.known_only), "targets": args.targets, "preset": args.preset}
    # the model lives in this process (default) or on each Ray worker (--executor ray); this driver plans and merges
    with from_cli(args, str(args.model)) as executor:
        res = run_on_executor(args, executor, bench, cases, store, acc, meta, say)
    path = res.save(args.out)
    s, b = res.summary, res.baseline
    resumed = res.meta.get("n_cases", 0) - res.meta.get("n_computed_now", 0)
    print(f"{res.mod} {res.label}: Score {fmt(s['Score'])} ES {fmt(s['ES'])} PS {fmt(s['PS'])} NS {fmt(s['NS'])} "
          f"(unedited: Score {fmt(b['Score'])} ES {fmt(b['ES'])} PS {fmt(b['PS'])} NS {fmt(b['NS'])}); "
          f"{s['n_cases']} cases" + (f", {resumed} read back from an earlier run" if resumed else "")
          + f"; wrote {path}")
    return 0


def check_preset(method: str, preset: str | None) -> None:
    """Fail before the model loads on a ``--preset`` the editor does not have (the error of
    ``lalm_interp.editors.presets`` lists the valid names and the closest one)."""
    if not preset:
        return
    from lalm_interp.editors import presets

    presets.path(method, preset)


def fitting(cases: list, window: int, meta: dict[str, Any], say) -> list:
    """The cases whose edit prompt fits the encoder window (``window`` samples at 16 kHz); the
    others are skipped up front — said on stderr and listed in ``meta["skipped"]`` with the reason —
    instead of failing the known filter or the edit later."""
    keep, skipped = [], {}
    for c in cases:
        n = len(c.request.prompt.audio)
        if n > window:
            skipped[c.case_id] = f"edit prompt is {n / 16000:.2f} s, longer than the {window / 16000:.2f} s encoder window"
        else:
            keep.append(c)
    if skipped:
        say(f"skipping {len(skipped)} case(s) whose edit prompt is longer than the model's "
            f"{window / 16000:.2f} s window (e.g. {next(iter(skipped))}); `bench build --max-seconds` keeps them out")
        meta["skipped"] = skipped
    return keep


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


def site_check(state: Any, payload: dict[str, Any]) -> list[str]:
    """Shard function: ``--site`` values checked on the model's adapter (the closest valid editing
    site on a typo or an out-of-range layer) and resolved by the editor they make."""
    _, _, adapter = state
    check_site_names(payload["sites"], adapter)
    return [str(s) for s in payload["editor"].resolve_sites(adapter)]


def run_on_executor(args: Any, executor: Any, bench: Any, cases: list, store: Any,
                    acc: bool | None, meta: dict[str, Any], say) -> Any:
    """``edit run`` on ``executor`` (this process by default; Ray workers with ``--executor ray``,
    docs/usage/scale-out.md): the site check, the known filter, the ``--site auto`` trace, the key
    statistics and the edit cases all run there; returns the merged ``RunResult``."""
    from lalm_interp.evaluation.runs import evaluate, known_filter, worker_info
    from lalm_interp.loading import resolve_source

    if not executor.in_process:
        say(f"starting {executor!r}")
    if args.site and auto_streams(args.method, args.site) is None:  # fail early on a bad site, with the closest one
        executor.map(site_check, [{"sites": args.site, "editor": make_editor(args)}])
    info = executor.map(worker_info, [{}])[0]
    cases = fitting(cases, info["window"], meta, say)
    if args.known_only:
        ok = known_filter(executor, [c.request.prompt for c in cases])
        cases = [c for c, k in zip(cases, ok) if k]
    cases = select_targets(args, cases)
    sites = choose_sites(args, executor, info, cases, str(args.model), say, meta)  # before --limit
    if args.limit:
        cases = cases[: args.limit]
    editor = make_editor(args, sites)
    info = executor.map(worker_info, [{"editor": editor}])[0]  # its sites resolved on the model
    say(f"{len(cases)} cases, method {args.method}, sites {editor.site_spec}")
    corpus = key_corpus(args, bench, say) if info["stats_sites"] else None
    meta.update(model_source=resolve_source(args.model).location or str(args.model),
                fingerprint=info["fingerprint"], corpus=corpus.id if corpus is not None else None)
    return evaluate(executor, editor, cases, args.out, accumulate=acc, store=store, corpus=corpus,
                    fingerprint=info["fingerprint"], meta=meta, progress=say)


def register(sub) -> None:
    p = sub.add_parser("edit", help="knowledge editing: run an editor over a benchmark")
    s = p.add_subparsers(dest="edit_command", metavar="ACTION")
    r = s.add_parser("run", help="edit each benchmark case and score ES/PS/NS before and after")
    r.add_argument("--model", required=True, help="'organism', a checkpoint folder or a hub id")
    r.add_argument("--bench", required=True, help="benchmark folder (lalm-interp bench build)")
    r.add_argument("--method", required=True, help="editor name: rome, crossmodal, alphaedit, crossmodal-alphaedit, finetune")
    r.add_argument("--site", action="append", default=None,
                   help="site(s) to edit, e.g. audio.layers.1 (= audio.layers.1.mlp.down), text.layers.0:2; repeat for "
                        "cross-modal. 'auto' (or audio.auto / text.auto): the peak-AIE layer(s) of a selection trace "
                        "of the edit prompts; omitted: the model's documented default sites, else auto")
    r.add_argument("--auto-n", type=count(), default=8, help="edit prompts traced by --site auto (default 8)")
    r.add_argument("--preset", default=None,
                   help="named hyper-parameter preset of the editor (paper, organism; default: the model's own — organism for the "
                        "organism, paper otherwise); --hparam overrides it")
    r.add_argument("--word", default="last", choices=["first", "last", "subject"], help="subject word the key is taken at")
    r.add_argument("--out", required=True,
                   help="output folder: result.json and cases/ (one file per finished case: a rerun resumes)")
    r.add_argument("--hparam", action="append", metavar="KEY=VALUE", help="override a hyper-parameter (dotted for nested: audio.steps=5)")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--accumulate", dest="mode", action="store_const", const="accumulate",
                      help="keep every edit (sequential editing); default for multi-layer editors")
    mode.add_argument("--reset", dest="mode", action="store_const", const="reset",
                      help="revert after every case; default for single-layer editors")
    r.set_defaults(mode=None)
    r.add_argument("--limit", type=count(), default=None, help="at most this many cases")
    r.add_argument("--rendition", default=None, help="rendition of the edit prompts (default: the benchmark's first)")
    r.add_argument("--known-only", action="store_true", help="keep only cases whose true object is the model's top-1")
    r.add_argument("--targets", choices=["all", "produced"], default="all",
                   help="'produced': keep cases whose target_new is the true object of another (known) case "
                        "— an answer the model gives; audio-side edits cannot reach others on small models")
    r.add_argument("--cache", default=None, help="activation cache root for key statistics (default: $LALM_INTERP_CACHE or ./cache)")
    add_corpus_options(r)
    r.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    r.add_argument("--quiet", action="store_true")
    from ._scaleout import add_cli_options

    add_cli_options(r)
    r.set_defaults(func=run)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])
