"""A registered intervention kind defined outside the package (the compiler untouched), shared by
the kind tests and the segmented back end's fallback tests, and the plain hooked forward it must equal."""

from dataclasses import dataclass

import torch

from lalm_interp.interventions import Edit, KindResult, Row, read, register_kind, set_
from lalm_interp.specs import SpecError


@register_kind
@dataclass(frozen=True)
class Scale:
    """Multiply the values at a site over named spans by ``factor`` (0: zero-ablation), in one new
    run (the clean or the corrupted one); result ``p:<name>``."""

    at: str
    factor: float = 0.0
    positions: tuple = ("last_token",)
    run: str = "clean"
    name: str = "scaled"

    def validate(self, adapter, exp):
        if len(adapter.expand(self.at)) != 1:
            raise SpecError(f"Scale.at={self.at!r} must name one site")

    def rows(self, prompt):
        site = prompt.adapter.one(self.at)
        pos = prompt.span_positions(site, self.positions)
        return [Row({"run": self.name}, corrupted=self.run == "corrupt", edits=[Edit(site, pos, kind=self)])]

    def apply(self, w, adapter, site, edits):
        for row, e in edits:
            set_(w, adapter, site, read(w, adapter, site, e.positions, row) * self.factor, e.positions, row)

    def results(self, prompt, rows, p, base):
        return KindResult(scalars={f"p:{self.name}": float(p[0])})

    def result_variables(self):
        return [f"p:{self.name}"]


def zeroed_forward_p(model, prep, site, positions) -> float:
    """P(first object token) of a plain clean forward of ``prep``'s prompt with a torch hook that
    zeroes ``site``'s output at ``positions``: the reference a clean zero-ablation run must equal."""
    def hook(m, args, out):
        out = out.clone()
        out[:, positions] = 0.0
        return out

    h = prep.adapter.module(model, site).register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(**prep.compiled.inputs, use_cache=False).logits
    finally:
        h.remove()
    return float(torch.log_softmax(logits[0, prep.L - 1].float(), -1)[prep.token_ids[0]].exp())
