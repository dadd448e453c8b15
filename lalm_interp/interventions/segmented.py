"""The segmented back end: run a plan's rows computing only what a restoration can change.

The batched compiler (:class:`~lalm_interp.interventions.compile.Compiled`) runs every row as one
full forward. Three savings make most of that work unnecessary, each exact (the same numbers up to
float rounding; tested to 1e-5 against the batched path) and each switchable through
``Experiment.savings`` (``docs/usage/tracing.md#savings``):

``effective_length``
    Qwen2-Audio runs its encoder on the 30 s padded window, but masks the padded frames out of
    attention: the real frames' outputs depend on the padding only through the two convolutions'
    receptive field. The encoder here runs on the real mel frames plus the one frame conv2 needs
    (``2F + 1`` mel frames for ``F`` real encoder frames) and keeps the ``F`` real frames — those
    are exactly the frames the full-window forward lets attention see. Declared per adapter
    (``AdapterSpec.encoder_masks_padding``).
``shared_prefix``
    A row whose first edit is at layer ``a`` is the base run (corrupted, or clean for a clean-target
    patch) below ``a``: the base run is computed once, its states recorded, and each row starts at
    its first edited layer (at ``a + 1`` when that first edit replaces layer ``a``'s output). Rows
    join a growing batch at their start layer.
``kv_reuse``
    On the causal text side a row whose edits start at position ``t`` equals the base run at every
    position ``< t`` in every layer, so it computes only positions ``≥ t``, attending to the base
    run's recorded keys/values for the prefix. A row with audio edits starts at the first audio
    token: the chat template's system prompt before it is shared by every row of both streams.
    Logits are computed only where the object is scored.

And whenever the program runs, rows with the same base run and the same effective edits are computed
once (a window clipped to the same layers of a shallow stack, for instance).

The reference runs (clean and corrupted) are computed once per prompt through the same segmented
forward, with the corruption at its site exactly as in the batched path (σ of the clean values over
the span, the same seeded draw). Rows whose edits this back end cannot place (sites outside
conv2 / layer outputs / attn / mlp, ``@in`` ports, edits of registered kinds) run on the batched
compiler instead — :meth:`Program.supports` decides, per row.

A *program* knows one model family's forward as separate stages. Adapters name theirs
(``AdapterSpec.segmented``); :data:`PROGRAMS` holds them (``qwen2_audio``).
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from ..adapters.base import Adapter
from ..errors import AdapterError
from ..sites import Site
from ..specs import SAVINGS, SpecError
from .plan import CorruptionPlan, Row
from .primitives import gaussian_factor

PROGRAMS: dict[str, type] = {}
"""Program name (``AdapterSpec.segmented``) → its class."""


def register_program(name: str) -> Callable[[type], type]:
    """Class decorator: register a segmented program under ``name``."""
    def deco(cls: type) -> type:
        PROGRAMS[name] = cls
        return cls

    return deco


# ------------------------------------------------------------------------------------ row analysis
@dataclass
class _Job:
    """One row as the segmented back end runs it."""

    index: int                      # position in the caller's row list
    base: int                       # 0 = clean run, 1 = corrupted run
    audio_start: int | None = None  # -1 = from conv2, j = joins encoder layer j, n = after the encoder
    text_start: int = 0             # joins text layer j (n_text: only the final norm/head)
    t: int = 0                      # first text position it computes
    edits: dict[Site, list[tuple[torch.Tensor, int]]] = field(default_factory=dict)  # site → (positions, source row)


class _PrefixKV:
    """The cache object Qwen2-style attention calls: ``update(k, v, layer)`` returns the keys/values
    of the whole sequence, i.e. the base run's recorded prefix (positions < t) followed by the
    row's own. With ``record`` it keeps what it is given (the reference pass)."""

    def __init__(self, prefix: "dict[int, tuple[torch.Tensor, torch.Tensor]] | None" = None, t: int = 0,
                 record: bool = False):
        self.prefix = prefix or {}
        self.t = t
        self.record: "dict[int, tuple[torch.Tensor, torch.Tensor]] | None" = {} if record else None

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *args: Any, **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.record is not None:
            self.record[layer_idx] = (k, v)
        if self.t == 0:
            return k, v
        pk, pv = self.prefix[layer_idx]
        B = k.shape[0]
        return (torch.cat([pk[..., : self.t, :].expand(B, *pk.shape[1:-2], self.t, pk.shape[-1]), k], dim=-2),
                torch.cat([pv[..., : self.t, :].expand(B, *pv.shape[1:-2], self.t, pv.shape[-1]), v], dim=-2))


def causal_mask(q_pos: torch.Tensor, k_len: int, impl: str, dtype: torch.dtype) -> torch.Tensor:
    """(1, 1, q, k) mask letting query position ``p`` see keys ``0..p``: boolean for ``sdpa``,
    additive (0 / dtype min) for ``eager``."""
    allowed = torch.arange(k_len, device=q_pos.device)[None, :] <= q_pos[:, None]
    if impl == "sdpa":
        return allowed[None, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=q_pos.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[None, None]


# ------------------------------------------------------------------------------------ the program
class Program:
    """Interface of a segmented program for one prompt (see :class:`Qwen2AudioProgram`)."""

    ATTN = ("sdpa", "eager")

    def supports(self, row: Row) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def run(self, rows: Sequence[Row], memory_mb: int, progress: Any = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@register_program("qwen2_audio")
class Qwen2AudioProgram(Program):
    """Qwen2-Audio's forward as stages: conv front (conv1, conv2 — the corruption site — GELU,
    positions) → encoder layers → pool + norm → projector → merge at the audio placeholders →
    decoder layers → final norm → lm head (at the object positions only).

    inputs: the prompt's model inputs (batch 1, on the model's device); L: prompt length;
    token_ids: object tokens; savings: the enabled subset of :data:`SAVINGS`."""

    def __init__(self, model: torch.nn.Module, adapter: Adapter, inputs: dict[str, torch.Tensor], L: int,
                 token_ids: Sequence[int], corruption: CorruptionPlan, savings: Sequence[str]):
        self.model, self.adapter, self.inputs, self.L = model, adapter, inputs, L
        self.device = inputs["input_ids"].device
        self.token_ids = list(token_ids)
        self.corruption = corruption
        self.savings = set(savings)
        m = model.model
        self.enc, self.projector, self.lm, self.head = m.audio_tower, m.multi_modal_projector, m.language_model, model.lm_head
        self.n_audio = len(self.enc.layers)
        self.n_text = len(self.lm.layers)
        ids = inputs["input_ids"]
        self.S = int(ids.shape[1])
        mel = inputs["input_features"]
        n_mel = int(inputs[adapter.spec.feature_mask_key].sum())
        F, n_tok = (int(v) for v in self.enc._get_feat_extract_output_lengths(torch.tensor(n_mel)))
        self.F, self.n_tok = F, n_tok
        self.a0, n = adapter.audio_slots(ids[0])
        if n != n_tok:  # the model's own forward refuses this too
            raise AdapterError(f"the prompt has {n} audio placeholder tokens but its {n_mel} mel frames give {n_tok} "
                               "audio tokens; build inputs with lalm_interp.inputs (one clip per prompt).")
        window = int(mel.shape[-1])
        if "effective_length" in self.savings and adapter.spec.encoder_masks_padding:
            self.mel = mel[..., : min(2 * F + 1, window)]
            self.Fe = F
        else:
            self.mel = mel
            self.Fe = window // 2
        self.enc_mask = self._encoder_mask()
        self.text_impl = self.lm.config._attn_implementation
        self._refs: dict[str, Any] | None = None
        self.forwards = 0
        self.waste = 0.1
        self.chunk_log: list[tuple[int, int]] = []  # (rows, estimated activation bytes) per chunk run
        self.supported_sites = self._site_table()

    # ------------------------------------------------------------------ what it can place
    def _site_table(self) -> dict[Site, tuple[str, int | None]]:
        """Every site this program edits → (stream stage, layer): ``('conv2', None)``,
        ``('audio', j)`` or ``('text', j)``."""
        a = self.adapter
        self.conv2 = a.one("audio.conv2")
        self.resid = {(stream, j): a.one(f"{stream}.layers.{j}.resid")
                      for stream, n in (("audio", self.n_audio), ("text", self.n_text)) for j in range(n)}
        out: dict[Site, tuple[str, int | None]] = {self.conv2: ("conv2", None)}
        for stream, n in (("audio", self.n_audio), ("text", self.n_text)):
            for j in range(n):
                for comp in ("resid", "attn", "mlp", "mlp.down"):
                    out[a.one(f"{stream}.layers.{j}.{comp}")] = (stream, j)
        return out

    @classmethod
    def available(cls, model: torch.nn.Module, adapter: Adapter) -> str | None:
        """``None`` when this program can run ``model``; else the reason it cannot."""
        lm = model.model.language_model
        impl = lm.config._attn_implementation
        if impl not in cls.ATTN:
            return f"text attention implementation {impl!r} (segmented runs support {list(cls.ATTN)})"
        if any(t != "full_attention" for t in getattr(lm.config, "layer_types", ["full_attention"])):
            return "sliding-window text layers"
        return None

    def supports(self, row: Row) -> bool:
        return all(e.kind is None and e.site in self.supported_sites and e.src in (0, 1) for e in row.edits)

    # ------------------------------------------------------------------ encoder pieces
    def _encoder_mask(self) -> Any:
        """The encoder's attention mask: none on the effective length (every frame is real); on the
        full window, the padded frames masked as keys exactly as the model's own forward does."""
        if self.Fe == self.F:
            return None
        from transformers.masking_utils import create_bidirectional_mask  # noqa: PLC0415 - transformers-only helper

        valid = (torch.arange(self.Fe, device=self.mel.device) < self.F).long()[None]
        dummy = torch.zeros((1, self.Fe, 1), dtype=self.mel.dtype, device=self.mel.device)
        return create_bidirectional_mask(config=self.enc.config, inputs_embeds=dummy, attention_mask=valid)

    def _conv2(self, B: int) -> torch.Tensor:
        """conv2's output (B, C, Fe) before its GELU."""
        x = torch.nn.functional.gelu(self.enc.conv1(self.mel.to(self.enc.conv1.weight.dtype)))
        return self.enc.conv2(x)[..., : self.Fe].expand(B, -1, -1).contiguous()

    def _after_conv2(self, c2: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.gelu(c2).permute(0, 2, 1)
        return h + self.enc.embed_positions.weight[: self.Fe]

    def _audio_layer(self, j: int, h: torch.Tensor) -> torch.Tensor:
        return self.enc.layers[j](h, self.enc_mask)

    def _tokens(self, h: torch.Tensor) -> torch.Tensor:
        """Encoder output → projected audio tokens (B, n_tok, D)."""
        x = self.enc.avg_pooler(h.permute(0, 2, 1)).permute(0, 2, 1)
        x = self.enc.layer_norm(x)[:, : self.n_tok]
        return self.projector(x)

    def _merge(self, tok: torch.Tensor, base_embeds: torch.Tensor) -> torch.Tensor:
        e = base_embeds.expand(tok.shape[0], -1, -1).clone()
        e[:, self.a0 : self.a0 + self.n_tok] = tok.to(e.dtype)
        return e

    # ------------------------------------------------------------------ text pieces
    def _rope(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = torch.arange(self.S, device=like.device)[None]
        cos, sin = self.lm.rotary_emb(like, pos)
        return pos, cos, sin

    def _text_layer(self, j: int, h: torch.Tensor, t: int, kv: _PrefixKV) -> torch.Tensor:
        pos, cos, sin = self._rope_cache
        q_pos = pos[0, t:]
        mask = causal_mask(q_pos, self.S, self.text_impl, h.dtype)
        return self.lm.layers[j](h, attention_mask=mask, position_ids=pos[:, t:],
                                 position_embeddings=(cos[:, t:], sin[:, t:]), cache=kv, use_cache=False)

    def _logprobs(self, h: torch.Tensor, t: int) -> torch.Tensor:
        """(B, m) object log-probs from the last layer's states over positions ``t..S-1``."""
        m = len(self.token_ids)
        sel = h[:, self.L - 1 - t : self.L - 1 - t + m]
        lp = torch.log_softmax(self.head(self.lm.norm(sel)).float(), dim=-1)
        idx = torch.as_tensor(self.token_ids, device=lp.device)
        return lp[:, torch.arange(m, device=lp.device), idx]

    # ------------------------------------------------------------------ hooks
    @contextmanager
    def _hooks(self, fns: dict[Site, Callable[[torch.Tensor], None]]) -> Iterator[None]:
        """Forward hooks calling ``fn(x_btc)`` on each site's value (in place) while inside."""
        handles = []
        a = self.adapter
        for site, fn in fns.items():
            def hook(mod: Any, args: Any, out: Any, site: Site = site, fn: Callable = fn) -> None:
                fn(a.to_btc(site, a.select(site, out)))
            handles.append(a.module(self.model, site).register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    # ------------------------------------------------------------------ the reference runs
    def references(self, sites: set[Site]) -> dict[str, Any]:
        """Clean and corrupted runs (batch 2), recording what rows start from: the input of every
        encoder and decoder layer, conv2's output, the merged embeddings, every decoder layer's
        keys/values, and the values at ``sites`` (what edits copy)."""
        if self._refs is not None and sites <= set(self._refs["values"]):
            return self._refs
        a = self.adapter
        values: dict[Site, torch.Tensor] = {}
        plan = self.corruption
        cs = plan.site

        def keep(site: Site) -> Callable[[torch.Tensor], None]:
            return lambda x: values.__setitem__(site, x.clone())

        fns: dict[Site, Callable[[torch.Tensor], None]] = {s: keep(s) for s in sites if s != cs}
        with torch.no_grad(), self._hooks(fns):
            c2 = self._conv2(2)
            if cs != self.conv2:  # Compiled.program() never builds a program for such a plan
                raise SpecError(f"the segmented back end corrupts at audio.conv2, not {cs}; run this plan with "
                                "Experiment(savings=()) (docs/usage/tracing.md#savings).")
            x = a.to_btc(cs, c2)
            self._apply_corruption(x)
            if cs in sites:
                values[cs] = x.clone()
            h = self._after_conv2(c2)
            audio_in = []
            for j in range(self.n_audio):
                audio_in.append(h)
                h = self._audio_layer(j, h)
            audio_out = h
            base_embeds = self.lm.embed_tokens(self.inputs["input_ids"])
            embeds = self._merge(self._tokens(h), base_embeds)
            self._rope_cache = self._rope(embeds)
            kv = _PrefixKV(record=True)
            text_in = []
            h = embeds
            for j in range(self.n_text):
                text_in.append(h)
                h = self._text_layer(j, h, 0, kv)
            lp = self._logprobs(h, 0)
        self.forwards += 1
        self._refs = dict(c2=c2, audio_in=audio_in + [audio_out], embeds=embeds, base_embeds=base_embeds,
                          text_in=text_in + [h], kv=kv.record, values=values, lp=lp)
        return self._refs

    def _apply_corruption(self, x: torch.Tensor) -> None:
        """Corrupt row 1 of ``x`` (conv2's value, (2, Fe, C) view) as the batched path does."""
        plan = self.corruption
        spec = plan.spec
        a, b = plan.start, plan.stop
        if spec.noise == "gaussian":
            z = plan.noise(x.shape[-1], x.dtype, x.device)
            f = gaussian_factor(x, (a, b), spec.scale, spec.sigma, 0)
            x[1, a:b] += f.to(device=x.device, dtype=x.dtype) * z
        elif spec.noise == "zero":
            x[1, a:b] = 0
        elif spec.noise == "replace":
            x[1, a:b] = plan.replace_values.to(device=x.device, dtype=x.dtype)

    # ------------------------------------------------------------------ planning rows
    def _job(self, k: int, row: Row) -> _Job:
        job = _Job(k, 1 if row.corrupted else 0)
        audio_first: int | None = None
        text_first: int | None = None
        t_first: int | None = None
        for e in row.edits:
            stream, layer = self.supported_sites[e.site]
            pos = e.positions.long().to(self.device)
            if stream != "text":
                pos = pos[pos < self.Fe]  # padded frames the effective-length encoder drops: masked, no effect
            if pos.numel() == 0:
                continue
            job.edits.setdefault(e.site, []).append((pos, int(e.src)))
            if stream == "conv2":
                audio_first = -1
            elif stream == "audio":
                start = layer + 1 if e.site.component == "resid" else layer
                audio_first = start if audio_first is None else min(audio_first, start)
            else:
                start = layer + 1 if e.site.component == "resid" else layer
                text_first = start if text_first is None else min(text_first, start)
                p0 = int(pos.min())
                t_first = p0 if t_first is None else min(t_first, p0)
        if "shared_prefix" not in self.savings:
            audio_first = -1 if audio_first is not None else None
            text_first = 0 if text_first is not None else None
        job.audio_start = audio_first
        if audio_first is not None:
            job.text_start, job.t = 0, self.a0 if t_first is None else min(self.a0, t_first)
        elif text_first is not None:
            job.text_start, job.t = text_first, t_first
        else:
            job.text_start, job.t = self.n_text, self.L - 1  # no edit has any effect: the base run
        if "kv_reuse" not in self.savings:
            job.t = 0
        job.t = min(job.t, self.L - 1)
        return job

    def _row_bytes(self, job: _Job, t: int) -> int:
        """Activation bytes one row adds to a chunk computing positions ``t..S-1`` (the estimate of
        docs/usage/tracing.md on the lengths this back end computes)."""
        cfg = self.adapter.config
        tc = cfg.text_config
        q = self.S - t
        kv = int(tc.num_key_value_heads) * int(getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads)
        per = 4 * (tc.num_attention_heads * q * self.S + 4 * q * tc.intermediate_size + 2 * len(self.token_ids) * tc.vocab_size
                   + 2 * self.S * kv)  # + the prefix keys/values each row attends to
        if job.audio_start is not None:
            ac = cfg.audio_config
            per += 4 * (ac.encoder_attention_heads * self.Fe * self.Fe + 4 * self.Fe * ac.encoder_ffn_dim)
        return per

    def _chunks(self, jobs: list[_Job], t: int, memory_mb: int) -> Iterator[list[_Job]]:
        """``jobs`` in chunks whose estimated activations fit ``memory_mb`` (at least one row each)."""
        budget = memory_mb * 2**20
        cur: list[_Job] = []
        used = 0
        for j in jobs:
            b = self._row_bytes(j, t)
            if cur and used + b > budget:
                self.chunk_log.append((len(cur), used))
                yield cur
                cur, used = [], 0
            cur.append(j)
            used += b
        if cur:
            self.chunk_log.append((len(cur), used))
            yield cur

    def _buckets(self, jobs: list[_Job]) -> list[tuple[int, list[_Job]]]:
        """Jobs (one base and kind) grouped into buckets computed from one start position each:
        rows with nearby first positions share a forward from the smallest, as long as the positions
        computed beyond each row's own start stay within ``waste`` of the bucket's necessary work
        (bigger batches, fewer layer calls; every extra position equals the base run's)."""
        by_t: dict[int, list[_Job]] = defaultdict(list)
        for j in jobs:
            by_t[j.t].append(j)
        out: list[tuple[int, list[_Job]]] = []
        for t in sorted(by_t):
            group = by_t[t]
            if out:
                t0, cur = out[-1]
                need = sum(self.S - j.t for j in cur) + len(group) * (self.S - t)
                done = (len(cur) + len(group)) * (self.S - t0)
                if done <= (1 + self.waste) * need:
                    cur.extend(group)
                    continue
            out.append((t, list(group)))
        return out

    # ------------------------------------------------------------------ running rows
    def _edit_fns(self, chunk: list[_Job], stream: str, t: int, active: list[int]) -> dict[Site, Callable]:
        """site → in-place editor of the chunk's rows (``active[0]`` rows are in the batch now)."""
        refs = self._refs
        per_site: dict[Site, list[tuple[int, torch.Tensor, torch.Tensor]]] = defaultdict(list)
        for i, job in enumerate(chunk):
            for site, edits in job.edits.items():
                if (self.supported_sites[site][0] == "text") != (stream == "text"):
                    continue
                for pos, src in edits:
                    per_site[site].append((i, pos, refs["values"][site][src, pos]))

        def editor(items: list[tuple[int, torch.Tensor, torch.Tensor]]) -> Callable[[torch.Tensor], None]:
            def fn(x: torch.Tensor) -> None:
                for i, pos, val in items:
                    if i < active[0]:
                        x[i, pos - t] = val.to(x.dtype)
            return fn

        return {s: editor(v) for s, v in per_site.items() if s != self.conv2}

    def _resid_join(self, chunk: list[_Job], i: int, stream: str, layer: int, x: torch.Tensor, t: int) -> None:
        """Edits at ``layer``'s output (resid) of row ``i`` applied to its join state ``x`` (S', C)."""
        refs = self._refs
        site = self.resid[(stream, layer)]
        for pos, src in chunk[i].edits.get(site, ()):
            x[pos - t] = refs["values"][site][src, pos].to(x.dtype)

    def _audio_chunk(self, chunk: list[_Job]) -> torch.Tensor:
        """Encoder → merged embeddings (len(chunk), S, D) for rows with audio edits (sorted by start)."""
        refs = self._refs
        a = self.adapter
        conv2 = self.conv2
        active = [0]
        fns = self._edit_fns(chunk, "audio", 0, active)
        h = None
        first = chunk[0].audio_start
        with self._hooks(fns):
            for step in range(first, self.n_audio + 1):
                joins = [i for i, job in enumerate(chunk) if job.audio_start == step]
                if joins:
                    if step == -1:
                        c2 = torch.stack([refs["c2"][chunk[i].base] for i in joins])
                        x = a.to_btc(conv2, c2)
                        for k, i in enumerate(joins):
                            for pos, src in chunk[i].edits.get(conv2, ()):
                                x[k, pos] = a.to_btc(conv2, refs["c2"])[src, pos]
                        new = self._after_conv2(c2)
                    else:
                        new = torch.stack([refs["audio_in"][step][chunk[i].base] for i in joins])
                        if step > 0:
                            for k, i in enumerate(joins):
                                self._resid_join(chunk, i, "audio", step - 1, new[k], 0)
                    h = new if h is None else torch.cat([h, new], 0)
                    active[0] = h.shape[0]
                if step == -1 or step == self.n_audio:
                    continue
                if h is not None:
                    h = self._audio_layer(step, h)
        tok = self._tokens(h)
        return self._merge(tok, refs["base_embeds"])

    def _text_chunk(self, chunk: list[_Job], t: int, embeds: torch.Tensor | None) -> torch.Tensor:
        """Rows of one (base, t) group, sorted by text start; ``embeds``: merged embeddings of the
        rows with audio edits (they come first and join at layer 0)."""
        refs = self._refs
        base = chunk[0].base
        kv = _PrefixKV({j: (k[base : base + 1], v[base : base + 1]) for j, (k, v) in refs["kv"].items()}, t)
        active = [0]
        fns = self._edit_fns(chunk, "text", t, active)
        n_audio_rows = 0 if embeds is None else embeds.shape[0]
        h = None
        with self._hooks(fns):
            for step in range(chunk[0].text_start, self.n_text + 1):
                joins = [i for i, job in enumerate(chunk) if job.text_start == step]
                if joins:
                    parts = []
                    for i in joins:
                        if i < n_audio_rows:
                            parts.append(embeds[i, t:])
                        else:
                            x = refs["text_in"][step][base, t:].clone()
                            if step > 0:
                                self._resid_join(chunk, i, "text", step - 1, x, t)
                            parts.append(x)
                    new = torch.stack(parts)
                    h = new if h is None else torch.cat([h, new], 0)
                    active[0] = h.shape[0]
                if step < self.n_text and h is not None:
                    h = self._text_layer(step, h, t, kv)
            return self._logprobs(h, t)

    def run(self, rows: Sequence[Row], memory_mb: int, progress: Any = None) -> torch.Tensor:
        """(len(rows), m) object log-probs of ``rows`` (all :meth:`supports`-ed)."""
        m = len(self.token_ids)
        if not rows:
            return torch.empty(0, m)
        jobs, twins = self._unique([self._job(k, r) for k, r in enumerate(rows)])
        sites = {s for j in jobs for s in j.edits}
        with torch.no_grad():
            refs = self.references(sites)
            out = torch.empty(len(rows), m)
            groups: dict[tuple[bool, int], list[_Job]] = defaultdict(list)
            for j in jobs:
                if not j.edits:
                    out[j.index] = refs["lp"][j.base].cpu()
                    if progress is not None:
                        progress.update(1)
                    continue
                groups[(j.audio_start is None, j.base)].append(j)
            for (text_only, _base), js in sorted(groups.items()):
                key = (lambda j: (j.text_start,)) if text_only else (lambda j: (j.audio_start, j.text_start))
                for t, bucket in self._buckets(js):
                    bucket.sort(key=key)
                    for chunk in self._chunks(bucket, t, memory_mb):
                        if text_only:
                            lp = self._text_chunk(chunk, t, None)
                        else:
                            lp = self._text_chunk(chunk, t, self._audio_chunk(chunk))
                        self.forwards += 1
                        for j, v in zip(chunk, lp.cpu()):
                            out[j.index] = v
                        if progress is not None:
                            progress.update(len(chunk))
        for k, first in twins:
            out[k] = out[first]
        if progress is not None and twins:
            progress.update(len(twins))
        return out

    @staticmethod
    def _unique(jobs: list[_Job]) -> tuple[list[_Job], list[tuple[int, int]]]:
        """Jobs with distinct effects, and (row, row it equals) for the others: two rows with the
        same base run and the same effective edits are one computation (e.g. window-10 centres whose
        windows are clipped to the same layers of a shallow stack)."""
        seen: dict[tuple, int] = {}
        keep: list[_Job] = []
        twins: list[tuple[int, int]] = []
        for j in jobs:
            key = (j.base, tuple(sorted((str(site), src, tuple(pos.tolist()))
                                        for site, edits in j.edits.items() for pos, src in edits)))
            if key in seen:
                twins.append((j.index, seen[key]))
            else:
                seen[key] = j.index
                keep.append(j)
        return keep, twins


def program_for(model: torch.nn.Module, adapter: Adapter) -> "tuple[type | None, str | None]":
    """(program class, None) when ``adapter`` declares one that can run ``model``; else
    (None, the reason) — the compiler then keeps to the batched path."""
    name = adapter.spec.segmented
    if name is None:
        return None, f"adapter {adapter.name} declares no segmented program"
    cls = PROGRAMS.get(name)
    if cls is None:
        return None, f"no segmented program named {name!r} is registered"
    why = cls.available(model, adapter)
    return (cls, None) if why is None else (None, why)


__all__ = ["SAVINGS", "PROGRAMS", "register_program", "Program", "Qwen2AudioProgram", "program_for", "causal_mask"]
