"""Compile intervention plans into nnsight traces.

A *plan* is a list of rows for ONE spoken prompt: row 0 is the clean run, row 1 the corrupted run,
and every further row is a corrupted (or clean) run with edits: "copy row ``src``'s values at these
positions of this site" (:class:`Restore`, :class:`Patch`), or an edit of a registered kind
(:mod:`~lalm_interp.interventions.kinds`) that the kind applies itself. Every read and write is one
of the site-addressed primitives of :mod:`~lalm_interp.interventions.primitives`. The compiler

* groups every edit by site and applies them in the adapter's forward order (users never see
  nnsight's OutOfOrderError),
* batches all rows of a chunk into one forward of one invoke (a probe measured ~60x over one trace
  per restoration),
* sizes chunks from a memory budget (:func:`rows_per_forward`),
* for plans whose edits are all on the text side, runs the audio encoder once for (clean, corrupt)
  and feeds its merged embeddings to every row (``reuse_encoder``),
* reads tuple outputs (attention) and channels-first outputs (conv) through the adapter.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..adapters.base import Adapter
from ..inputs import place
from ..sites import Site
from ..specs import SAVINGS
from ..wrap import wrap
from .kinds import apply_corruption, kind_of
from .plan import CorruptionPlan, Edit, Row, positions_tensor
from .primitives import read, set_
from .segmented import program_for


def copy_rows(w: Any, adapter: Adapter, site: Site, rows: torch.Tensor, pos: torch.Tensor, src: torch.Tensor) -> None:
    """``x[rows[i], pos[i]] ← x[src[i], pos[i]]`` for every i: copy values between batch rows
    (restoration and patching)."""
    set_(w, adapter, site, read(w, adapter, site, pos, src), pos, rows=rows)


def group_edits(rows: Sequence[Row], offset: int) -> dict[Site, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """site → (row indices, position indices, source rows) flattened over all copy edits of all rows
    (edits of registered kinds are applied by their kinds: :func:`kind_edits`)."""
    acc: dict[Site, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
    for k, r in enumerate(rows):
        for e in r.edits:
            if e.kind is not None:
                continue
            n = e.positions.numel()
            acc.setdefault(e.site, []).append(
                (torch.full((n,), offset + k, dtype=torch.long), e.positions.long(),
                 torch.full((n,), e.src, dtype=torch.long))
            )
    return {s: tuple(torch.cat(parts) for parts in zip(*v)) for s, v in acc.items()}


def kind_edits(rows: Sequence[Row]) -> dict[Site, list[tuple[Any, list[tuple[int, Edit]]]]]:
    """site → [(spec, [(row index, edit), ...]), ...]: the edits of registered kinds, grouped by
    site and by spec (in the order the specs first appear)."""
    acc: dict[Site, dict[int, tuple[Any, list[tuple[int, Edit]]]]] = {}
    for k, r in enumerate(rows):
        for e in r.edits:
            if e.kind is not None:
                acc.setdefault(e.site, {}).setdefault(id(e.kind), (e.kind, []))[1].append((k, e))
    return {s: list(v.values()) for s, v in acc.items()}


def object_logprobs_in_trace(logits: torch.Tensor, L: int, token_ids: Sequence[int]) -> torch.Tensor:
    """(B, m) log-probs of the object tokens from teacher-forced logits (prompt length ``L``)."""
    m = len(token_ids)
    lp = torch.log_softmax(logits[:, L - 1 : L - 1 + m].float(), dim=-1)
    idx = torch.as_tensor(list(token_ids), device=lp.device)
    return lp[:, torch.arange(m, device=lp.device), idx]


def rows_per_forward(adapter: Adapter, seq_len: int, memory_mb: int, *, text_only: bool) -> int:
    """Rows that fit ``memory_mb`` of activations, from a per-row estimate (docs/usage/tracing.md):
    attention scores + MLP intermediates of the widest layer + the logits, in float32."""
    cfg = adapter.config
    tc = cfg.text_config
    heads_t, ffn_t, vocab = tc.num_attention_heads, tc.intermediate_size, tc.vocab_size
    per_row = 4 * (heads_t * seq_len * seq_len + 4 * seq_len * ffn_t + 2 * seq_len * vocab)
    if not text_only:
        ac = cfg.audio_config
        T = int(ac.max_source_positions)
        per_row += 4 * (ac.encoder_attention_heads * T * T + 4 * T * ac.encoder_ffn_dim)
    return max(3, int(memory_mb * 2**20 // max(per_row, 1)))


class Compiled:
    """Runs plans for one prompt. ``inputs`` are the teacher-forced model inputs of one example
    (batch 1); ``L`` the prompt length; ``token_ids`` the object tokens."""

    def __init__(self, model: torch.nn.Module, adapter: Adapter, inputs: dict[str, torch.Tensor], L: int,
                 token_ids: Sequence[int], corruption: CorruptionPlan, *, memory_mb: int = 2048,
                 savings: Sequence[str] = SAVINGS):
        self.model = model
        self.adapter = adapter
        self.inputs = place(inputs, model)  # the model's device, mel features in its dtype
        self.L = L
        self.token_ids = list(token_ids)
        self.corruption = corruption
        self.memory_mb = memory_mb
        self.w = wrap(model)
        self._embeds: torch.Tensor | None = None
        self._forwards = 0
        self.read_values: dict[Site, torch.Tensor] = {}
        self.savings = tuple(savings)
        self._program: Any = None
        self.segmented_rows = 0  # rows the last run() gave the segmented back end
        self.why_batched: str | None = None  # why program() is None, once asked

    @property
    def forwards(self) -> int:
        """Forwards run so far (batched traces plus segmented chunks and reference passes)."""
        return self._forwards + (self._program.forwards if self._program is not None else 0)

    @forwards.setter
    def forwards(self, n: int) -> None:
        """``compiled.forwards = 0`` restarts the count."""
        self._forwards = n
        if self._program is not None:
            self._program.forwards = 0

    def program(self) -> Any:
        """The segmented program for this prompt (``None`` when every saving is off, or the adapter
        declares none that can run this model, or the corruption is not at ``audio.conv2``):
        :mod:`~lalm_interp.interventions.segmented`."""
        if self._program is None:
            cls, why = program_for(self.model, self.adapter)
            if not self.savings:
                why = "Experiment.savings is ()"
            elif cls is not None and self.corruption.site not in self.adapter.expand("audio.conv2"):
                why = f"the corruption is at {self.corruption.site}, not audio.conv2"
            elif cls is not None:
                self._program = cls(self.model, self.adapter, self.inputs, self.L, self.token_ids,
                                    self.corruption, self.savings)
            self.why_batched = why if self._program is None else None
        return self._program

    # ------------------------------------------------------------------ core
    def _replicate(self, n: int, embeds: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in self.inputs.items():
            if embeds is not None and k in ("input_ids", "input_features", "feature_attention_mask"):
                continue
            out[k] = v.expand(n, *v.shape[1:]).contiguous()
        if embeds is not None:
            out[self.adapter.spec.llm_input[1]] = embeds
        return out

    def _trace(self, rows: Sequence[Row], *, embeds: torch.Tensor | None = None,
               capture_embeds: bool = False, reads: Sequence[Site] = ()) -> torch.Tensor:
        """One forward over ``rows`` (row 0 must be clean, row 1 corrupted when edits copy from them).
        Returns (B, m) object log-probs; values at ``reads`` (after every intervention at that site)
        are kept in ``self.read_values``."""
        a = self.adapter
        B = len(rows)
        corrupted = torch.tensor([k for k, r in enumerate(rows) if r.corrupted], dtype=torch.long)
        grouped = group_edits(rows, 0)
        by_kind = kind_edits(rows)
        ops = {s: [] for s in sorted({*grouped, *by_kind, *reads}, key=a.forward_rank)}
        corrupt_here = embeds is None and corrupted.numel() > 0
        if corrupt_here:
            ops.setdefault(self.corruption.site, [])
            ops = {s: ops[s] for s in sorted(ops, key=a.forward_rank)}
        inputs = self._replicate(B, embeds)
        saved: dict[Site, Any] = {}
        with torch.no_grad(), self.w.trace(**inputs, use_cache=False):
            saved_embeds = None
            for s in ops:
                if capture_embeds and saved_embeds is None and a.forward_rank(s) > self._llm_rank:
                    saved_embeds = self._capture_embeds()
                if corrupt_here and s == self.corruption.site:
                    kind_of(self.corruption.spec).corrupt(self.corruption, self.w, a, corrupted)
                if s in grouped:
                    copy_rows(self.w, a, s, *grouped[s])
                for spec, edits in by_kind.get(s, ()):
                    kind_of(spec).apply(spec, self.w, a, s, edits)
                if s in reads:
                    saved[s] = read(self.w, a, s).clone().save()
            if capture_embeds and saved_embeds is None:
                saved_embeds = self._capture_embeds()
            lp = object_logprobs_in_trace(self.w.output.logits, self.L, self.token_ids).save()
        self._forwards += 1
        if capture_embeds:
            self._embeds = saved_embeds.detach()
        self.read_values = {s: v.detach().cpu() for s, v in saved.items()}
        return lp.detach().cpu()

    @property
    def _llm_rank(self) -> int:
        """Forward rank before which the merged LLM input embeddings exist (first text layer)."""
        return self.adapter.forward_rank(self.adapter.expand("text.layers.0.*")[0]) - 1

    def _capture_embeds(self) -> Any:
        path, kw = self.adapter.spec.llm_input
        e = self.w
        for part in path.split("."):
            e = e[int(part)] if part.isdigit() else getattr(e, part)
        return e.inputs[1][kw].save()

    # ------------------------------------------------------------------ public
    def base(self, reads: Sequence[Site] = ()) -> torch.Tensor:
        """(2, m) object log-probs of the clean and corrupted runs; caches the merged embeddings and
        keeps the values at ``reads`` (rows clean, corrupt) in ``self.read_values``."""
        capture = self.adapter.spec.llm_input is not None
        return self._trace([Row({"run": "clean"}, corrupted=False), Row({"run": "corrupt"})],
                           capture_embeds=capture, reads=reads)

    def run(self, rows: Sequence[Row], *, reuse_encoder: bool = True, progress: Any = None) -> torch.Tensor:
        """(len(rows), m) object log-probs of the given rows (each corrupted unless marked clean).

        Rows the segmented program supports run there (the savings of ``self.savings``, exact);
        the others, and every row when the savings are off or ``reuse_encoder`` is False, run
        batched: in chunks whose rows 0/1 are the clean/corrupt references."""
        prog = self.program() if reuse_encoder else None
        self.segmented_rows = 0
        if prog is not None:
            fast = [k for k, r in enumerate(rows) if prog.supports(r)]
            if fast:
                on = set(fast)
                rest = [k for k in range(len(rows)) if k not in on]
                out = torch.empty(len(rows), len(self.token_ids))
                out[fast] = prog.run([rows[k] for k in fast], self.memory_mb, progress)
                if rest:
                    out[rest] = self._run_batched([rows[k] for k in rest], reuse_encoder, progress)
                self.segmented_rows = len(fast)
                return out
        return self._run_batched(rows, reuse_encoder, progress)

    def _run_batched(self, rows: Sequence[Row], reuse_encoder: bool, progress: Any) -> torch.Tensor:
        a = self.adapter
        llm = self._llm_rank
        text_only = (all(e.site.stream == "text" and a.forward_rank(e.site) > llm for r in rows for e in r.edits)
                     and all(r.corrupted for r in rows))  # text.embed runs before the reused embeddings: not reusable
        reuse = (reuse_encoder and text_only and a.spec.llm_input is not None
                 and a.forward_rank(self.corruption.site) < llm)  # corruption inside the reused part
        if reuse and self._embeds is None:
            self.base()
        seq = self.inputs["input_ids"].shape[1]
        per = rows_per_forward(a, seq, self.memory_mb, text_only=reuse) - 2
        out = []
        ref = [Row({"run": "clean"}, corrupted=False), Row({"run": "corrupt"})]
        for i in range(0, len(rows), per):
            chunk = list(rows[i : i + per])
            if reuse:
                E = self._embeds
                embeds = torch.cat([E[0:1], E[1:2].expand(len(chunk) + 1, *E.shape[1:])], 0)
                lp = self._trace(ref + chunk, embeds=embeds)
            else:
                lp = self._trace(ref + chunk)
            out.append(lp[2:])
            if progress is not None:
                progress.update(len(chunk))
        m = len(self.token_ids)
        return torch.cat(out, 0) if out else torch.empty(0, m)

    def run_naive(self, rows: Sequence[Row]) -> torch.Tensor:
        """One trace per row (clean + corrupt + that row): the slow reference the batched path
        must equal (tests, benchmarks)."""
        ref = [Row({"run": "clean"}, corrupted=False), Row({"run": "corrupt"})]
        return torch.cat([self._trace(ref + [r])[2:] for r in rows], 0)


def replace_values_from(model: torch.nn.Module, adapter: Adapter, site: Site, inputs: dict[str, torch.Tensor],
                        start: int, stop: int) -> torch.Tensor:
    """Activations of another clip at ``site`` over frames ``[start, stop)`` (for noise='replace')."""
    w = wrap(model)
    with torch.no_grad(), w.trace(**place(inputs, model), use_cache=False):
        x = read(w, adapter, site, (start, stop), 0).save()
    return x.detach().cpu().clone()


__all__ = ["Edit", "Row", "CorruptionPlan", "Compiled", "rows_per_forward", "positions_tensor",
           "replace_values_from", "apply_corruption", "copy_rows"]
