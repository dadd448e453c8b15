"""Site-addressed primitives: read, set, add and corrupt a site's value inside one nnsight trace.

Every intervention in the toolkit (causal tracing, key capture, the editors' value optimisation, the
organism's corruption test) is written with these four functions, called inside one trace of the
wrapped model (:func:`lalm_interp.wrap.wrap`)::

    w = wrap(model)
    with torch.no_grad(), w.trace(**inputs, use_cache=False):
        corrupt(w, adapter, "audio.conv2", (0, 64), z, rows=[1], scale=3.0, sigma="span")
        h = read(w, adapter, "text.layers.1.resid").save()
        logits = w.output.logits.save()

Notation: ``x`` is the value at the site in (batch, time, channels) layout: the module's output
(``output[0]`` for modules returning tuples, e.g. attention) or, for ``site@in``, its first input;
channels-first values (conv outputs) are seen transposed (:meth:`Adapter.to_btc`).
``rows`` and ``positions`` index the batch and time axes as in torch: ``None`` is every row /
position, an ``int`` or an index tensor picks some, a pair ``(a, b)`` of positions is the half-open
span ``a:b``; two index tensors of equal length pick (row, position) pairs.

* :func:`read`    → ``x[rows, positions]`` (a view of the live value; ``.save()`` it to keep it)
* :func:`set_`    ``x[rows, positions] ← value``
* :func:`add`     ``x[rows, positions] ← x[rows, positions] + delta``
* :func:`corrupt` ``x[rows, positions] ← x[rows, positions] + (scale·σ)·noise`` — ROME's causal-trace
  corruption, with σ a number or ``"span"``: the standard deviation of row ``clean_row``'s values
  over the positions (all channels), measured in this very trace.

Writes go in place when no gradient is being recorded (cheap; what tracing does under
``torch.no_grad()``); when one is (``torch.is_grad_enabled()``), the value is copied, written and
handed to the model in its place, so gradients flow through ``x`` and through ``value`` / ``delta``
(the editors optimise δ this way). Two rules from nnsight (``docs/gotchas/nnsight.md``): access sites
in forward order (sort with :meth:`Adapter.forward_rank`; :func:`in_forward_order` does it), and
``.save()`` whatever must outlive the ``with`` block.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence, Union

import torch

from ..adapters.base import Adapter
from ..sites import Site
from ..specs import SpecError
from ..wrap import envoy

Index = Union[None, int, tuple[int, int], Sequence[int], torch.Tensor]


def _index(i: Index, device: Any) -> Any:
    if i is None:
        return slice(None)
    if isinstance(i, tuple) and len(i) == 2 and all(isinstance(v, int) for v in i):
        return slice(i[0], i[1])
    if isinstance(i, int):
        return i
    return torch.as_tensor(i, dtype=torch.long).to(device)


def _site(adapter: Adapter, site: "Site | str") -> Site:
    """A :class:`Site` as it is (the adapter checks it when it is used); a string parsed to one site."""
    return site if isinstance(site, Site) else adapter.one(site)


def value(w: Any, adapter: Adapter, site: "Site | str") -> torch.Tensor:
    """The live tensor at ``site`` in the module's own layout (``output``/``output[0]``, or the
    first input for ``site@in``)."""
    s = _site(adapter, site)
    e = envoy(w, adapter, s)
    return adapter.select(s, e.input if s.port == "in" else e.output)


def read(w: Any, adapter: Adapter, site: "Site | str", positions: Index = None, rows: Index = None) -> torch.Tensor:
    """``x[rows, positions]`` in (batch, time, channels) layout. With both indices ``None`` this is
    a view of the live value (later writes show through); ``.clone()`` it to keep a snapshot."""
    s = _site(adapter, site)
    x = adapter.to_btc(s, value(w, adapter, s))
    if rows is None and positions is None:
        return x
    return x[_index(rows, x.device), _index(positions, x.device)]


def _write(w: Any, adapter: Adapter, site: "Site | str", rows: Index, positions: Index, fn: Any,
           operand: Any) -> None:
    """x[rows, positions] ← fn(x[rows, positions]); in place, or on a copy when gradients are recorded."""
    s = _site(adapter, site)
    e = envoy(w, adapter, s)
    raw = e.input if s.port == "in" else e.output
    t = adapter.select(s, raw)
    copy = torch.is_grad_enabled() and (t.requires_grad or (isinstance(operand, torch.Tensor) and operand.requires_grad))
    target = t.clone() if copy else t
    x = adapter.to_btc(s, target)  # a view: writes go through to ``target``
    r, p = _index(rows, x.device), _index(positions, x.device)
    x[r, p] = fn(x[r, p])
    if not copy:
        return
    if s.port == "in":
        e.input = target
    elif isinstance(raw, tuple):
        e.output = (target, *raw[1:])
    else:
        e.output = target


def set_(w: Any, adapter: Adapter, site: "Site | str", value: Any, positions: Index = None,
         rows: Index = None) -> None:
    """``x[rows, positions] ← value`` (broadcast; cast to the site's dtype and device)."""
    def put(cur: torch.Tensor) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.to(device=cur.device, dtype=cur.dtype).expand_as(cur)
        return torch.full_like(cur, value)

    _write(w, adapter, site, rows, positions, put, value)


def add(w: Any, adapter: Adapter, site: "Site | str", delta: torch.Tensor, positions: Index = None,
        rows: Index = None) -> None:
    """``x[rows, positions] ← x[rows, positions] + delta`` (``delta`` broadcast, cast to the site's
    dtype: a (channels,) vector adds the same change at every position)."""
    _write(w, adapter, site, rows, positions, lambda cur: cur + delta.to(device=cur.device, dtype=cur.dtype), delta)


def corrupt(w: Any, adapter: Adapter, site: "Site | str", positions: Index, noise: torch.Tensor, *,
            rows: Index = None, scale: float = 1.0, sigma: "float | str | torch.Tensor" = 1.0,
            clean_row: int = 0) -> None:
    """ROME's Gaussian corruption: ``x[rows, positions] ← x[rows, positions] + (scale·σ)·noise``.

    noise: standard-normal draws shaped like ``x[rows, positions]`` (or broadcastable to it, e.g.
        (len(positions), channels) for the same draw in every row).
    sigma: a number; or ``"span"`` — σ = std of ``x[clean_row, positions]`` (all channels and
        positions), the clean run's spread in this trace (ROME and the paper use 3σ)."""
    s = _site(adapter, site)
    x = adapter.to_btc(s, value(w, adapter, s))
    factor = gaussian_factor(x, positions, scale, sigma, clean_row)
    _write(w, adapter, s, rows, positions,
           lambda cur: cur + factor.to(device=cur.device, dtype=cur.dtype) * noise.to(device=cur.device, dtype=cur.dtype),
           noise)


def gaussian_factor(x: torch.Tensor, positions: Index, scale: float, sigma: "float | str | torch.Tensor",
                    clean_row: int = 0) -> torch.Tensor:
    """``scale·σ`` of :func:`corrupt` for a (batch, time, channels) value ``x``: σ a number, or
    ``"span"`` — the std of ``x[clean_row, positions]`` over all its channels and positions."""
    if isinstance(sigma, str):
        if sigma != "span":
            raise SpecError(f"corrupt: sigma={sigma!r}; expected a number or 'span' (the clean row's std).")
        sig = x[clean_row, _index(positions, x.device)].float().std()
    else:
        sig = sigma if isinstance(sigma, torch.Tensor) else torch.tensor(float(sigma))
    return scale * sig


def in_forward_order(adapter: Adapter, sites: Iterable["Site | str"]) -> list[Site]:
    """``sites`` (deduplicated) in the order the model computes them: the order a trace must access them."""
    return sorted({_site(adapter, s) for s in sites}, key=adapter.forward_rank)


__all__ = ["read", "set_", "add", "corrupt", "value", "in_forward_order", "gaussian_factor"]
