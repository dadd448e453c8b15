"""The key-statistics pipeline (plan → shard → merge): the second moments of an editing site's
keys over a corpus (ROME's C, AlphaEdit's projector), cached where editors look for them.

The corpus is cut into chunks of whole batches; each shard computes a
:class:`~lalm_interp.cache.SecondMoment` for its chunk and writes it as an atomic partial file
(``<cache>/stats-partial/<site>/<digest>/chunk-<i>-of-<n>-<size>.h5``, so a restarted job skips
finished chunks); the driver merges the chunks in index order (deterministic) and caches the result
with ``Store.put_stats`` — then the partial files are removed. One chunk (the default on an
in-process executor) is the editors' own code path (``editors.keys.key_stats``), so the statistics
are bitwise those an edit run computes itself. See ``docs/usage/scale-out.md``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..cache import SecondMoment, Store
from ..cache.layout import stats_dir
from ..cache.stats import stats_path
from ..editors.base import EditContext, EditorError, KeyCorpus, normalise_site
from ..editors.keys import corpus_keys, key_stats
from ..errors import SiteError
from ..executors import ExecutorError, chunks, fault_spec, maybe_fail
from ..sites import parse


def key_sites(adapter: Any, specs: Any) -> list[Any]:
    """The concrete ``...@in`` sites that site ``specs`` name, as editors read them (editor shorthand
    allowed: ``text.layers.4`` is ``text.layers.4.mlp.down``; ranges ``text.layers.2:5`` expand)."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    try:
        sites = adapter.expand([normalise_site(s) for s in specs])
    except SiteError as err:
        raise EditorError(f"key statistics: {str(err).splitlines()[0]}") from err
    bad = [str(s) for s in sites if not adapter.component(s).has_input]
    if bad:
        raise EditorError(f"key statistics: {bad} have no key input (@in); statistics are taken at a module's "
                          "input, e.g. text.layers.4.mlp.down (mlp.down_proj) or audio.layers.1.mlp.down (fc2).")
    return [s.with_port("in") for s in sites]


def _corpus(payload: dict[str, Any]) -> KeyCorpus:
    return KeyCorpus(payload["corpus_id"], payload["clips"], payload["batch_size"], payload["instruction"],
                     payload.get("sample_rate"))


def stats_chunk(state: Any, payload: dict[str, Any]) -> Any:
    """Shard function: the SecondMoment of the keys at ``payload["site"]`` over ``payload["clips"]``
    (loaded from / written to ``payload["path"]`` when given)."""
    path = Path(payload["path"]) if payload.get("path") else None
    if path is not None and path.exists():
        return SecondMoment.load(path)
    model, processor, adapter = state
    ctx = EditContext(model, processor, adapter, corpus=_corpus(payload), fingerprint="chunk")
    acc = SecondMoment()
    try:
        for k, batch in enumerate(corpus_keys(ctx, parse(payload["site"]))):
            maybe_fail(payload.get("fault"), payload["shard"], k)
            acc.update(batch)
    except EditorError:
        if acc.count:  # only "no clip of this chunk fits the window" is expected here
            raise
    if path is not None and acc.count:
        acc.save(path, {"site": payload["site"], "corpus": payload["corpus_id"], "chunk": payload["shard"]})
    return acc


def stats_whole(state: Any, payload: dict[str, Any]) -> Any:
    """Shard function: the statistics over the whole corpus by the editors' own code path
    (``editors.keys.key_stats``: read from / cached in ``payload["store_root"]`` under
    ``payload["fingerprint"]``; ``recompute`` replaces a cached entry)."""
    model, processor, adapter = state
    store = Store(payload["store_root"]) if payload.get("store_root") else None
    ctx = EditContext(model, processor, adapter, store=store, corpus=_corpus(payload),
                      fingerprint=payload.get("fingerprint"))
    site = parse(payload["site"])
    maybe_fail(payload.get("fault"), payload["shard"], 0)
    if store is not None and payload.get("recompute"):
        return store.key_stats(str(site), model=ctx.fingerprint, corpus=ctx.corpus.id,
                               compute=lambda: corpus_keys(ctx, site), recompute=True)
    return key_stats(ctx, site)


def key_stats_sharded(executor: Any, corpus: Any, site: Any, *, store: Any = None, model: str | None = None,
                      chunk_batches: int | None = None, recompute: bool = False) -> Any:
    """Statistics of the keys at ``site`` over ``corpus`` (a ``KeyCorpus``) on ``executor``, in
    chunks of ``chunk_batches`` × ``corpus.batch_size`` clips (default: one chunk on an in-process
    executor — the editors' own code path, bitwise what an edit run computes —, else two chunks per
    worker: every chunk's partial result is a d × d float64 matrix, ~1 GB at a 7B model's
    ``mlp.down@in``, so many small chunks cost more than they balance).

    With ``store`` and ``model`` (the model fingerprint, as in ``EditContext.fingerprint``) the
    result is read from / cached in the store exactly where ``editors.keys.key_stats`` looks, so a
    later edit run finds it. Several chunks equal the single-process statistics up to float64
    rounding (the batches are the same; only the order of the exact pairwise merges differs).
    """
    s = str(parse(site).with_port("in"))  # what editors.keys.key_stats uses
    final = None
    if store is not None:
        if not model:
            raise ExecutorError("key_stats_sharded(store=...) needs model= (the fingerprint the stats are keyed by).")
        final = stats_path(stats_dir(store.root), s, model, corpus.id)
        if final.exists() and not recompute:
            return SecondMoment.load(final)
    n_batches = -(-len(corpus.clips) // corpus.batch_size)
    if chunk_batches is None:
        workers = 1 if getattr(executor, "in_process", False) else 2 * max(getattr(executor, "workers", 1), 1)
        chunk_batches = max(1, -(-n_batches // workers))
    fault = fault_spec()
    common = {"site": s, "corpus_id": corpus.id, "batch_size": corpus.batch_size, "instruction": corpus.instruction,
              "sample_rate": corpus.sample_rate, "fault": fault}
    if chunk_batches >= n_batches:  # one chunk: the editors' own path
        root = str(Path(store.root).resolve()) if store is not None else None
        return executor.map(stats_whole, [{**common, "shard": 0, "clips": list(corpus.clips), "store_root": root,
                                           "fingerprint": model, "recompute": recompute}])[0]
    size = chunk_batches * corpus.batch_size
    pieces = chunks(len(corpus.clips), size)
    part_dir = store.root / "stats-partial" / s / final.stem if final is not None else None
    payloads = [{**common, "shard": i, "clips": [corpus.clips[j] for j in r],
                 "path": str(part_dir / f"chunk-{i:05d}-of-{len(pieces):05d}-{size}.h5") if part_dir else None}
                for i, r in enumerate(pieces)]
    parts = executor.map(stats_chunk, payloads)
    total = SecondMoment()
    for p in parts:  # fixed order: deterministic
        total.merge(p)
    if total.count == 0:
        raise ExecutorError(f"key statistics for {s}: no clip of corpus {corpus.id!r} fits the encoder window; "
                            "use shorter utterances.")
    if store is not None:
        total = store.put_stats(s, total, model=model, corpus=corpus.id)
        shutil.rmtree(part_dir, ignore_errors=True)
    return total
