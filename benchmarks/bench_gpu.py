"""GPU checks and timings, in one short run for a lent GPU machine (see docs/usage/gpu.md).

Sections, each recorded on its own (a failure in one is reported and the next still runs):

* ``correctness``: the organism traced on CUDA equals the same trace on the CPU; the batched sweep
  equals the one-trace-per-restoration loop on CUDA; a sharded ``run_experiment`` on CUDA.
* ``editors``: every editor on the organism on CUDA raises P(target_new) and reverts bitwise (key
  statistics computed on the GPU and written to a cache).
* ``compiler``: ``bench_tracing``'s comparison on CUDA — one example's full hidden-state sweep
  (every layer × every position) batched vs the naive loop, and text-side encoder reuse — for the
  organism and the tiny random model.
* ``real_dims``: Qwen2-Audio-7B's real architecture (tests/fixtures config) with random bf16 weights
  on the GPU: one example's hidden-state sweep, audio and text, rows per second, peak memory.
* ``editors_real_dims``: the same architecture with random bf16 weights; the editors with the
  ``paper`` preset on one spoken prompt (key statistics from 16 noise clips, cached in DIR/cache):
  ROME text 15, ROME audio 15, cross-modal ROME (audio 15 + text 15), AlphaEdit text 14:17,
  cross-modal AlphaEdit (audio 14:17 + text 14:17). Per editor: seconds for the key statistics (first
  use) and for the edit, peak memory, the handle's diagnostics (dW_rel, nullity, ‖P K0‖/‖K0‖, leak,
  drive_used), ΔW as applied in bf16 vs as computed, P(target_new) before/after, bitwise revert.
  Its own time budget (``--editors-budget-s``): an editor is skipped (and recorded) once it is spent,
  or when AlphaEdit's projectors (a CPU ``eigh`` per site) are estimated not to fit what is left.

Since #18 (the exact savings, ``Experiment.savings``; docs/usage/tracing.md#savings) every sweep of
``compiler`` and ``real_dims`` is timed twice, side by side: ``segmented_*`` keys are the segmented back
end with the default savings (``segmented_s``, ``segmented_forwards``, ``segmented_peak_mb``,
``segmented_ms_per_restoration``, ``segmented_full_sweep_s_estimate``, ``speedup_segmented_vs_batched``,
``segmented_vs_batched_max_abs_dP`` over ``dP_rows`` rows both ran), and the ``batched_*`` keys, the
naive-loop keys, ``full_sweep_s_estimate``, ``no_reuse_s`` and ``real_dims.full_example_sweep_s`` keep
their earlier meaning: the batched compiler with the savings off (``savings=()``), comparable with
earlier results files. ``real_dims.full_example_sweep_s_segmented`` (and
``examples_per_gpu_hour_segmented``) is the #18 figure (goal ≤ 10 s per example on an H200).

    python benchmarks/bench_gpu.py --out DIR [--budget-s 420] [--small] [--sections a,b]

``--small`` swaps the 7B config for a 2+2-layer one so the script can be checked on a CPU
(``editors_real_dims``: 3+3 layers, so that no edited text layer is the last one, and narrow widths,
256 / 512, so that it fits a small machine's memory).
``--sections`` (comma-separated; default all) runs only those sections.
Results go to ``DIR/bench_gpu.json`` after every section (``editors_real_dims``: after every editor).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "qwen2_audio_7b"
WORDS = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785), ("is", 1.785, 1.943))


def noise(seconds: float, seed: int) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def prompt(seed: int = 0, target: str = "Paris"):
    from lalm_interp.tracing import SpokenPrompt

    return SpokenPrompt(f"ex{seed}", noise(1.95, seed), WORDS, (0, 1), target, sample_rate=16000)


class Clock:
    def __init__(self, device: str):
        self.device = device

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def __call__(self, out: dict[str, Any], key: str):
        self.sync()
        t0 = time.perf_counter()
        yield
        self.sync()
        out[key] = round(time.perf_counter() - t0, 4)


def peak_mb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def build_random(config, device: str, dtype) -> Any:
    """A Qwen2-Audio with random weights of ``config``, built directly on ``device`` in ``dtype``."""
    from transformers import Qwen2AudioForConditionalGeneration

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2AudioForConditionalGeneration(config).eval()
        return model.to(dtype)  # sub-configs carry the checkpoint's dtype; make every part the same
    finally:
        torch.set_default_dtype(old)


# ---------------------------------------------------------------------------- sections
def correctness(device: str, out_dir: Path) -> dict[str, Any]:
    import lalm_interp
    from lalm_interp.executors import LocalExecutor
    from lalm_interp.interventions.results import families
    from lalm_interp.specs import Corrupt, Experiment, Restore
    from lalm_interp.tracing import trace_example
    from lalm_interp.tracing.causal import Prepared
    from lalm_interp.tracing.run import run_experiment

    res: dict[str, Any] = {}
    exp = Experiment("gpu-check", corrupt=Corrupt(scale=3.0),
                     restores=(Restore("audio.layers.*.resid", window=3, positions=("first_subject_word", "subject")),
                               Restore("text.layers.*.mlp", window=3, positions=("last_subject_word", "last_token")),
                               Restore("text.layers.*.attn", window=1, positions="each")))
    cpu = tuple(lalm_interp.load("organism"))
    gpu = tuple(lalm_interp.load("organism", device=device))
    ex = prompt(0)
    a, b = trace_example(*cpu, ex, exp), trace_example(*gpu, ex, exp)
    diffs = {v: float(abs(float(a[v]) - float(b[v]))) for v in a.ds.data_vars}
    diffs.update({f"ie:{f}": float(np.nanmax(np.abs(a[f].ie.values - b[f].ie.values))) for f in families(a)})
    res["max_abs_diff_cpu_vs_gpu"] = diffs  # keys "ie:<family>" as in earlier results/*.json
    res["p_clean_gpu"], res["p_corrupt_gpu"] = float(b["p_clean"]), float(b["p_corrupt"])
    prep = Prepared(*gpu, ex, exp)
    rows = prep.rows(Restore("audio.layers.*.resid", window=3, positions="each"))[::7]
    prep.compiled.base()
    batched, naive = prep.compiled.run(rows), prep.compiled.run_naive(rows)
    res["batched_vs_naive_max_abs_diff"] = float((batched - naive).abs().max())
    res["batched_vs_naive_rows"] = len(rows)
    ex_out = out_dir / "run_experiment"
    agg = run_experiment(None, None, None, [prompt(1), prompt(2)], exp, ex_out, progress=False, plots=False,
                         executor=LocalExecutor(state=gpu), shard_size=1)
    res["run_experiment_examples"] = int(agg.sizes["example"])
    ok = (max(res["max_abs_diff_cpu_vs_gpu"].values()) < 1e-3 and res["batched_vs_naive_max_abs_diff"] < 1e-4
          and res["run_experiment_examples"] == 2)
    res["ok"] = bool(ok)
    return res


def editors(device: str, out_dir: Path) -> dict[str, Any]:
    import lalm_interp
    from lalm_interp.cache import Store
    from lalm_interp.editors import EditContext, EditRequest, KeyCorpus, make
    from lalm_interp.evaluation import EditCase, score_case
    from lalm_interp.inputs import build_inputs
    from lalm_interp.scoring import score_objects

    model, processor, adapter = lalm_interp.load("organism", device=device)
    ctx = EditContext(model, processor, adapter, store=Store(out_dir / "cache"),
                      corpus=KeyCorpus("noise:6", [noise(2.5, 100 + i) for i in range(6)], sample_rate=16000))
    req = EditRequest(prompt(0), "Seattle", "first")

    def p_new() -> float:
        batch = build_inputs(processor, adapter, [req.prompt.audio], sample_rate=req.prompt.sample_rate)
        return float(score_objects(model, adapter, batch, [req.target_new]).total[0].exp())

    res: dict[str, Any] = {}
    for method, site in [("rome", "audio.layers.1.mlp.down"), ("rome", "text.layers.4.mlp.down"),
                         ("crossmodal", ["audio.layers.1", "text.layers.4"]), ("alphaedit", "text.layers.2:5"),
                         ("alphaedit", "audio.layers.0:3"), ("crossmodal-alphaedit", ["audio.layers.0:2", "text.layers.3:5"]),
                         ("finetune", "text.layers.4.mlp.down")]:
        key = f"{method}@{site}"
        try:
            snap = {k: v.clone() for k, v in model.state_dict().items()}
            before = p_new()
            t0 = time.perf_counter()
            handle = make(method, site).apply(ctx, req)
            dt = time.perf_counter() - t0
            after = p_new()
            rec = score_case(ctx, EditCase(req, (), ()))
            handle.revert()
            bitwise = all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())
            res[key] = {"p_new_before": before, "p_new_after": after, "edit_s": round(dt, 3),
                        "revert_bitwise": bitwise, "score_case_keys": sorted(rec)[:4],
                        "ok": bool(after > before and bitwise)}
        except Exception as err:  # noqa: BLE001 - one editor's failure must not hide the others'
            res[key] = {"ok": False, "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-2000:]}
    res["ok"] = all(v["ok"] for v in res.values() if isinstance(v, dict))
    return res


def _sweep(prep, stream: str, clock: Clock, *, naive_rows: int, reuse: bool = True,
           max_rows: int | None = None, seg_max_rows: int | None = None) -> dict[str, Any]:
    """One example's full resid sweep (window 10, every position) of ``stream``.

    ``segmented_*``: the segmented back end (``Experiment.savings`` default) on every row (or an
    evenly spaced ``seg_max_rows``), after a warm-up on a fresh program; timed with the program's
    construction and reference pass. ``batched_*``: the batched compiler with the savings off
    (``savings=()``), on every row or ``max_rows`` evenly spaced ones — as before #18.
    ``segmented_vs_batched_max_abs_dP``: max |P_segmented − P_batched| on the rows both ran."""
    from lalm_interp.specs import SAVINGS, Restore

    rows = prep.rows(Restore(f"{stream}.layers.*.resid", window=10, positions="each"))
    n_all = len(rows)

    def pick(k: int | None) -> list[int]:
        if k is None or k >= n_all:
            return list(range(n_all))
        return list(range(0, n_all, max(1, n_all // k)))[:k]

    b_idx, s_idx = pick(max_rows), pick(seg_max_rows)
    c = prep.compiled
    c.base()
    r: dict[str, Any] = {"restorations_in_sweep": n_all, "restorations_timed": len(b_idx)}
    # segmented (default savings)
    c.savings, c._program = tuple(SAVINGS), None
    seg_rows = [rows[i] for i in s_idx]
    c.run(seg_rows[:: max(1, len(seg_rows) // 4)])  # warm-up
    c._program = None
    reset_peak(clock.device)
    with clock(r, "segmented_s"):
        seg = c.run(seg_rows, reuse_encoder=reuse)
    prog = c._program
    r["segmented_rows_timed"] = len(s_idx)
    r["segmented_rows_on_program"] = c.segmented_rows
    r["segmented_forwards"] = prog.forwards if prog is not None else None
    r["segmented_peak_mb"] = peak_mb(clock.device)
    r["segmented_ms_per_restoration"] = 1e3 * r["segmented_s"] / len(s_idx)
    r["segmented_full_sweep_s_estimate"] = r["segmented_ms_per_restoration"] * n_all / 1e3
    # batched (savings off: the compiler as it was before #18)
    c.savings, c._program = (), None
    reset_peak(clock.device)
    f0 = c.forwards
    with clock(r, "batched_s"):
        bat = c.run([rows[i] for i in b_idx], reuse_encoder=reuse)
    r["batched_forwards"] = c.forwards - f0
    r["batched_peak_mb"] = peak_mb(clock.device)
    r["batched_ms_per_restoration"] = 1e3 * r["batched_s"] / len(b_idx)
    pos = {k: j for j, k in enumerate(s_idx)}
    both = [(pos[k], j) for j, k in enumerate(b_idx) if k in pos]
    r["dP_rows"] = len(both)
    if both:
        si, bi = (torch.tensor(x) for x in zip(*both))
        r["segmented_vs_batched_max_abs_dP"] = float((seg[si].exp() - bat[bi].exp()).abs().max())
    r["speedup_segmented_vs_batched"] = r["batched_ms_per_restoration"] / r["segmented_ms_per_restoration"]
    sample = [rows[i] for i in b_idx]
    sample = sample[:: max(1, len(sample) // naive_rows)][:naive_rows]
    c.run_naive(sample[:1])  # warm-up
    with clock(r, "naive_s"):
        c.run_naive(sample)
    r["naive_rows"] = len(sample)
    r["naive_ms_per_restoration"] = 1e3 * r["naive_s"] / len(sample)
    r["speedup_batched_vs_naive"] = r["naive_ms_per_restoration"] / r["batched_ms_per_restoration"]
    r["full_sweep_s_estimate"] = r["batched_ms_per_restoration"] * n_all / 1e3
    if stream == "text":
        with clock(r, "no_reuse_s"):
            c.run([rows[i] for i in b_idx], reuse_encoder=False)
        r["speedup_encoder_reuse"] = r["no_reuse_s"] / r["batched_s"]
    c.savings, c._program = tuple(SAVINGS), None
    return r


def compiler(device: str, clock: Clock) -> dict[str, Any]:
    from lalm_interp.executors.base import load_state
    from lalm_interp.specs import Experiment
    from lalm_interp.tracing.causal import Prepared

    res: dict[str, Any] = {}
    for name in ("organism", "tiny-random"):
        model, processor, adapter = load_state(name, device)
        prep = Prepared(model, processor, adapter, prompt(0), Experiment("bench", memory_mb=8192))
        res[name] = {s: _sweep(prep, s, clock, naive_rows=24) for s in ("audio", "text")}
    return res


def real_dims(device: str, clock: Clock, small: bool, budget_s: float) -> dict[str, Any]:
    from transformers import AutoConfig, AutoProcessor

    from lalm_interp import adapters
    from lalm_interp.specs import Experiment, Restore
    from lalm_interp.tracing.causal import Prepared

    config = AutoConfig.from_pretrained(FIXTURE, local_files_only=True)
    processor = AutoProcessor.from_pretrained(FIXTURE, local_files_only=True)
    if small:
        config.audio_config.encoder_layers = config.text_config.num_hidden_layers = 2
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    res: dict[str, Any] = {"dtype": str(dtype), "audio_layers": config.audio_config.encoder_layers,
                           "text_layers": config.text_config.num_hidden_layers}
    t0 = time.perf_counter()
    model = build_random(config, device, dtype)
    res["build_s"] = round(time.perf_counter() - t0, 1)
    res["params_b"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 3)
    res["weights_mb"] = peak_mb(device)
    adapter = adapters.for_model(model, processor)
    free = (torch.cuda.mem_get_info()[0] / 2**20) if device == "cuda" else 8192
    memory_mb = int(0.6 * free)
    res["memory_budget_mb"] = memory_mb
    prep = Prepared(model, processor, adapter, prompt(0), Experiment("real", memory_mb=memory_mb))
    base = prep.compiled.base()
    res["p_clean"], res["p_corrupt"] = (float(v) for v in base[:, 0].exp())
    t_text = time.perf_counter()
    res["text"] = _sweep(prep, "text", clock, naive_rows=2 if small else 6, max_rows=8 if small else None,
                         seg_max_rows=8 if small else None)
    left = budget_s - (time.perf_counter() - t_text)
    per = res["text"]["batched_ms_per_restoration"] / 1e3 * 3  # an audio row ≈ ≤3 text rows (encoder)
    n_audio = len(prep.rows(Restore("audio.layers.*.resid", window=10, positions="each")))
    cap = None if per * n_audio < 0.6 * left else max(64, int(0.6 * left / per))
    res["audio"] = _sweep(prep, "audio", clock, naive_rows=2 if small else 6, max_rows=8 if small else cap,
                          seg_max_rows=8 if small else None)
    a, t = res["audio"], res["text"]
    res["full_example_sweep_s"] = a["full_sweep_s_estimate"] + t["full_sweep_s_estimate"]
    res["examples_per_gpu_hour_hidden_state_sweep"] = 3600 / res["full_example_sweep_s"]
    res["full_example_sweep_s_segmented"] = a["segmented_full_sweep_s_estimate"] + t["segmented_full_sweep_s_estimate"]
    res["examples_per_gpu_hour_segmented"] = 3600 / res["full_example_sweep_s_segmented"]
    return res


# ---------------------------------------------------------------------------- editors at real dims
EDITOR_PLAN = (("rome", "text.layers.{L}.mlp.down"), ("rome", "audio.layers.{L}.mlp.down"),
               ("crossmodal", ("audio.layers.{L}.mlp.down", "text.layers.{L}.mlp.down")),
               ("alphaedit", "text.layers.{R}.mlp.down"),
               ("crossmodal-alphaedit", ("audio.layers.{R}.mlp.down", "text.layers.{R}.mlp.down")))
"""The editors of ``editors_real_dims``, in order: ``{L}`` = one layer (15 of 32; 1 of 3 with ``--small``),
``{R}`` = a layer range (14:17; 0:2 with ``--small``). Never the last text layer: there a δ at the subject's
positions cannot reach the prediction (no later attention), the v* gradient is exactly 0 and ΔW = 0."""
EDIT_NEW, EDIT_TRUE = "London", "Paris"  # one token each for the Qwen2-Audio-7B tokenizer (checked)


def _real_model(device: str, small: bool, dtype: torch.dtype, *, narrow: bool = False, layers: int = 2):
    """Qwen2-Audio-7B's architecture from the fixture config, random weights in ``dtype`` on ``device``;
    ``small``: ``layers`` + ``layers`` layers; ``narrow`` (with ``small``): also widths 256 / 512 so a
    CPU holds it (the 7B widths with 2 layers are still ~1.4 B parameters, mostly embeddings)."""
    from transformers import AutoConfig, AutoProcessor

    config = AutoConfig.from_pretrained(FIXTURE, local_files_only=True)
    processor = AutoProcessor.from_pretrained(FIXTURE, local_files_only=True)
    if small:
        config.audio_config.encoder_layers = config.text_config.num_hidden_layers = layers
        if narrow:
            ac, tc = config.audio_config, config.text_config
            ac.d_model, ac.encoder_attention_heads, ac.encoder_ffn_dim = 256, 4, 512
            tc.hidden_size, tc.num_attention_heads, tc.num_key_value_heads, tc.intermediate_size = 256, 4, 4, 512
            if getattr(tc, "head_dim", None) is not None:
                tc.head_dim = 64
    model = build_random(config, device, dtype)
    return model, processor, config


def _eigh_probe(n: int) -> float:
    """Seconds of one ``np.linalg.eigh`` of a random symmetric n×n float64 matrix (all CPU threads):
    AlphaEdit's projector (``cache.nullspace_projector``) runs exactly this on the CPU per site."""
    a = np.random.default_rng(0).standard_normal((n, n))
    a = a + a.T
    t0 = time.perf_counter()
    np.linalg.eigh(a)
    return time.perf_counter() - t0


def _records(x: Any, key: str) -> list[dict[str, Any]]:
    """Every dict inside ``x`` (nested dicts/lists) that has ``key``."""
    out: list[dict[str, Any]] = []
    if isinstance(x, dict):
        if key in x:
            out.append(x)
        for v in x.values():
            out += _records(v, key)
    elif isinstance(x, (list, tuple)):
        for v in x:
            out += _records(v, key)
    return out


def editors_real_dims(device: str, clock: Clock, small: bool, budget_s: float, out_dir: Path,
                      progress=lambda res: None) -> dict[str, Any]:
    import uuid
    import warnings

    from lalm_interp import adapters
    from lalm_interp.cache import Store
    from lalm_interp.editors import EditContext, EditRequest, KeyCorpus, make
    from lalm_interp.editors.base import _jsonable, _style
    from lalm_interp.editors.crossmodal import CrossModal, prefetch_stats
    from lalm_interp.editors.keys import weights_digest
    from lalm_interp.inputs import build_inputs
    from lalm_interp.scoring import object_prefix, object_token_ids, score_objects

    t_start = time.perf_counter()
    dtype = torch.bfloat16
    torch.manual_seed(0)
    # --small: 3+3 layers (not 2+2) so that the edited text layers are not the last one, as in the 7B
    model, processor, config = _real_model(device, small, dtype, narrow=small, layers=3)
    res: dict[str, Any] = {
        "dtype": str(dtype), "audio_layers": config.audio_config.encoder_layers,
        "text_layers": config.text_config.num_hidden_layers, "audio_d_model": config.audio_config.d_model,
        "audio_ffn": config.audio_config.encoder_ffn_dim, "text_hidden": config.text_config.hidden_size,
        "text_intermediate": config.text_config.intermediate_size, "budget_s": budget_s,
        "build_s": round(time.perf_counter() - t_start, 1),
        "params_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3), "weights_mb": peak_mb(device)}
    adapter = adapters.for_model(model, processor)
    L, R = ("1", "0:2") if small else ("15", "14:17")
    plan = [(m, (s.format(L=L, R=R) if isinstance(s, str) else tuple(x.format(L=L, R=R) for x in s)))
            for m, s in EDITOR_PLAN]
    corpus = KeyCorpus("noise:16x2.5s", [noise(2.5, 100 + i) for i in range(16)], batch_size=8, sample_rate=16000)
    # a name unique to this run: the weights are random, so statistics cached by an earlier run (other
    # weights, same parameter count) must never be taken for these (no '#<16 hex>': that form is a weights hash)
    fp = f"random-init-qwen2-audio{'-small' if small else '-7b'}:run-{uuid.uuid4().hex[:12]}"
    ctx = EditContext(model, processor, adapter, store=Store(out_dir / "cache"), corpus=corpus, fingerprint=fp)
    req = EditRequest(prompt(0, EDIT_TRUE), EDIT_NEW, "last")
    pre = object_prefix(adapter, build_inputs(processor, adapter, [req.prompt.audio], instruction=req.prompt.instruction,
                                              sample_rate=req.prompt.sample_rate))
    res["target_new"], res["target_true"] = EDIT_NEW, EDIT_TRUE
    res["target_token_ids"] = {o: object_token_ids(processor.tokenizer, o, pre) for o in (EDIT_NEW, EDIT_TRUE)}
    res["corpus"] = {"id": corpus.id, "clips": len(corpus.clips), "cache": str(out_dir / "cache"), "fingerprint": fp}
    res["chat_style"] = _style(processor)
    res["cpu_count"], res["omp_num_threads"] = os.cpu_count(), os.environ.get("OMP_NUM_THREADS")

    def p_of(obj: str) -> float:
        batch = build_inputs(processor, adapter, [req.prompt.audio], instruction=req.prompt.instruction,
                             sample_rate=req.prompt.sample_rate)
        return float(score_objects(model, adapter, batch, [obj]).total[0].exp())

    eigh_done: set[str] = set()
    eigh_probe: dict[str, Any] = {}
    res["editors"] = eds = {}
    for method, sites in plan:
        key = f"{method}@{sites if isinstance(sites, str) else '+'.join(sites)}"
        spent = time.perf_counter() - t_start
        if spent > budget_s:
            eds[key] = {"skipped": f"time budget spent ({spent:.0f} s of {budget_s:.0f} s)"}
            progress(res)
            continue
        rec: dict[str, Any] = {"method": method, "sites": sites}
        eds[key] = rec
        try:
            try:
                ed = make(method, list(sites) if not isinstance(sites, str) else sites, preset="paper")
                rec["preset"] = "paper"
            except Exception as err:  # noqa: BLE001 - no paper preset (or no preset= yet): the defaults, recorded
                ed = make(method, list(sites) if not isinstance(sites, str) else sites)
                rec["preset"] = "defaults"
                rec["preset_error"] = f"{type(err).__name__}: {str(err)[:400]}"
            rec["hparams"] = ed.describe()["hparams"]
            rs = ed.resolve_sites(adapter)
            rec["resolved_sites"] = [str(x) for x in rs]
            if "alphaedit" in method:  # the projectors are a CPU eigh per site: will they fit?
                pending = {str(x): adapter.module(model, x).weight.shape[1] for x in rs if str(x) not in eigh_done}
                if pending and not eigh_probe:
                    n0 = 1024 if small else 4096  # big enough to keep 16 threads busy, as the real eigh does
                    eigh_probe.update(n=n0, s=round(_eigh_probe(n0), 3))
                    res["eigh_probe"] = eigh_probe
                est = sum(1.2 * eigh_probe["s"] * (d / eigh_probe["n"]) ** 3 for d in pending.values()) if pending else 0.0
                rec["projector_estimate_s"] = round(est, 1)
                left = budget_s - (time.perf_counter() - t_start)
                if est > left:
                    rec["skipped"] = (f"AlphaEdit's projectors ({len(pending)} CPU eigh of dims "
                                      f"{sorted(set(pending.values()))}) are estimated at {est:.0f} s, more than "
                                      f"the {left:.0f} s left of the budget")
                    progress(res)
                    continue
            modules = {adapter.module_path(x): adapter.module(model, x) for x in rs}
            snap = {path: {n: q.detach().clone() for n, q in m.named_parameters(recurse=False)}
                    for path, m in modules.items()}
            digest0 = weights_digest(model)
            rec["p_new_before"], rec["p_true_before"] = p_of(EDIT_NEW), p_of(EDIT_TRUE)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                reset_peak(device)
                with clock(rec, "stats_s"):  # key statistics, first use (0 when an earlier editor computed them)
                    if isinstance(ed, CrossModal):
                        for stream in ("audio", "text"):
                            part = [x for x in rs if x.stream == stream]
                            prefetch_stats(ctx, ed.stage(stream, part), part)
                    else:
                        prefetch_stats(ctx, ed, rs)
                rec["stats_peak_mb"] = peak_mb(device)
                if "alphaedit" in method:
                    eigh_done.update(str(x) for x in rs)
                reset_peak(device)
                with clock(rec, "edit_s"):
                    handle = ed.apply(ctx, req)
                rec["edit_peak_mb"] = peak_mb(device)
            rec["warnings"] = sorted({f"{w.category.__name__}: {str(w.message)[:300]}" for w in caught})
            rec["p_new_after"], rec["p_true_after"] = p_of(EDIT_NEW), p_of(EDIT_TRUE)
            info = _jsonable(handle.info)
            rec["dW_rel"] = info.get("dW_rel")
            rec["drive_used"] = info.get("drive_used")
            rec["layers"] = [{k: x.get(k) for k in ("site", "nullity", "dim", "protected_in_nullspace",
                                                     "key_in_nullspace", "leak", "leak_total", "achieved",
                                                     "dW_fro", "l2")}
                             for x in _records(info, "nullity")]
            rec["v_star"] = [{k: x.get(k) for k in ("site", "nll", "p_new_at_v_star", "rel_error_Wk_v", "delta_norm",
                                                     "v_norm", "n_keys")}
                             for x in _records(info, "nll")]
            # ΔW as the editor computed it (float64) vs as it landed in the bf16 weight
            intended = {str(x["site"]): x["dW_fro"] for x in _records(info, "dW_fro") if "site" in x}
            rec["applied_vs_intended_dW"] = {c["site"]: (c["delta_fro"] / intended[c["site"]]
                                                         if intended.get(c["site"]) else None)
                                             for c in handle.changes}
            rec["info"] = info
            handle.revert()
            rec["revert_bitwise"] = all(torch.equal(q, snap[path][n]) for path, m in modules.items()
                                        for n, q in m.named_parameters(recurse=False))
            rec["revert_digest_equal"] = weights_digest(model) == digest0
            rec["p_new_after_revert"] = p_of(EDIT_NEW)
            rec["p_new_raised"] = bool(rec["p_new_after"] > rec["p_new_before"])
            rec["p_new_after_revert_equal"] = rec["p_new_after_revert"] == rec["p_new_before"]
            rec["ok"] = bool(rec["revert_bitwise"] and rec["revert_digest_equal"])
        except Exception as err:  # noqa: BLE001 - one editor's failure (e.g. in bf16) is a finding; the next runs
            rec.update(ok=False, error=f"{type(err).__name__}: {err}"[:2000], trace=traceback.format_exc()[-4000:])
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
        rec["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        print(f"-- editors_real_dims {key}: ok={rec.get('ok')} stats_s={rec.get('stats_s')} edit_s={rec.get('edit_s')} "
              f"elapsed_s={rec['elapsed_s']}{' ERROR ' + rec['error'][:200] if 'error' in rec else ''}", flush=True)
        progress(res)
    ran = [v for v in eds.values() if "skipped" not in v]
    res["ok"] = bool(ran) and all(v.get("ok", False) for v in ran)  # no editor that ran failed
    res["skipped"] = [k for k, v in eds.items() if "skipped" in v]
    res["complete"] = not res["skipped"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_gpu_out")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting heavy work after this")
    ap.add_argument("--small", action="store_true", help="2+2-layer config instead of the 7B one (CPU check)")
    ap.add_argument("--only", nargs="*", default=None, help="sections to run (default: all); as --sections")
    ap.add_argument("--sections", default=None,
                    help="comma-separated sections to run (default: all): correctness,editors,compiler,real_dims,"
                         "editors_real_dims")
    ap.add_argument("--editors-budget-s", type=float, default=360.0,
                    help="editors_real_dims: skip the remaining editors once this many seconds are spent")
    ap.add_argument("--no-tf32", action="store_true",
                    help="turn TF32 off for cuDNN convolutions and matmuls (PyTorch allows it for convs by default)")
    args = ap.parse_args()
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    only = None
    if args.only is not None or args.sections is not None:
        only = set(args.only or []) | {x.strip() for x in (args.sections or "").split(",") if x.strip()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clock = Clock(device)
    import nnsight
    import transformers

    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                              "torch": torch.__version__, "transformers": transformers.__version__,
                              "nnsight": getattr(nnsight, "__version__", "?"),
                              "tf32": {"cudnn": torch.backends.cudnn.allow_tf32,
                                       "matmul": torch.backends.cuda.matmul.allow_tf32}}
    start = time.perf_counter()
    sections = {
        "correctness": lambda: correctness(device, out),
        "editors": lambda: editors(device, out),
        "compiler": lambda: compiler(device, clock),
        "real_dims": lambda: real_dims(device, clock, args.small,
                                       max(60.0, args.budget_s - (time.perf_counter() - start))),
        "editors_real_dims": lambda: editors_real_dims(
            device, clock, args.small, min(args.editors_budget_s, max(60.0, args.budget_s - (time.perf_counter() - start))),
            out, progress=lambda res: save("editors_real_dims", {**res, "partial": True})),
    }
    unknown = sorted((only or set()) - set(sections))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {sorted(sections)}")

    def save(name: str, res: dict[str, Any]) -> None:
        report[name] = res
        (out / "bench_gpu.json").write_text(json.dumps(report, indent=1, default=str))

    for name, fn in sections.items():
        if only is not None and name not in only:
            continue
        if time.perf_counter() - start > args.budget_s:
            report[name] = {"skipped": "time budget spent"}
            continue
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as err:  # noqa: BLE001 - report and go on to the next section
            report[name] = {"ok": False, "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-3000:]}
        report[name]["section_s"] = round(time.perf_counter() - t0, 1)
        (out / "bench_gpu.json").write_text(json.dumps(report, indent=1, default=str))
        print(f"== {name} ({report[name]['section_s']} s)\n{json.dumps(report[name], indent=1, default=str)}", flush=True)


if __name__ == "__main__":
    main()
