"""Known-fact filter and edit-set construction, as in the paper.

The filter is model-agnostic: it takes a *scorer*, a callable that receives a batch of items and
returns, for each, whether the pre-edit model's prediction is right (paper: the top-1 token at the
last position equals the first token of ``target_true``). A per-item predicate can be adapted with
:func:`batch_scorer`. The model-side scorer lives in ``lalm_interp.scoring``.

An edit set is K known facts plus M random other facts (paper: 200 + 300 = 500), drawn
reproducibly from a seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from .errors import BenchmarkError
from .store import Item, atomic_write_json

BatchScorer = Callable[[Sequence[Item]], Sequence[bool]]
"""``scorer(items) -> [correct, ...]``, one bool per item, same order."""

AGGREGATES = ("all", "any", "majority")


def batch_scorer(is_known: Callable[[Item], bool]) -> BatchScorer:
    """Wrap a per-item predicate ``is_known(item) -> bool`` as a :data:`BatchScorer`."""
    return lambda items: [bool(is_known(it)) for it in items]


@dataclass(frozen=True)
class KnownFilter:
    """Result of :func:`filter_known`.

    Fields:
        per_item: item id → the scorer's verdict.
        per_fact: fact id → verdict aggregated over that fact's scored items.
        aggregate: how items were combined per fact (``"all"``, ``"any"``, ``"majority"``).
    """

    per_item: Mapping[str, bool]
    per_fact: Mapping[str, bool]
    aggregate: str

    @property
    def known_facts(self) -> tuple[str, ...]:
        """Fact ids judged known, sorted."""
        return tuple(sorted(f for f, ok in self.per_fact.items() if ok))

    @property
    def known_items(self) -> tuple[str, ...]:
        return tuple(sorted(i for i, ok in self.per_item.items() if ok))


def filter_known(items: Iterable[Item], scorer: BatchScorer, *, forms: Sequence[str] = ("prompt",),
                 aggregate: str = "all", batch_size: int = 32) -> KnownFilter:
    """Score the items of the given ``forms`` in batches of ``batch_size`` and aggregate per fact.

    Args:
        items: benchmark items (e.g. ``Benchmark.open(dir)``).
        scorer: batch scorer (see :data:`BatchScorer`); use :func:`batch_scorer` for a predicate.
        forms: which item forms are scored. Default ``("prompt",)`` — the full spoken prompt.
        aggregate: a fact is known if ``"all"`` (default), ``"any"`` or a strict ``"majority"`` of
            its scored items (one per rendition) are right.
        batch_size: items per scorer call. Default 32.
    """
    if aggregate not in AGGREGATES:
        raise BenchmarkError(f"Unknown aggregate {aggregate!r}.\n  expected: one of "
                             f"{', '.join(AGGREGATES)}\n  fix: aggregate='all'")
    if batch_size < 1:
        raise BenchmarkError(f"batch_size={batch_size}.\n  expected: >= 1\n  fix: batch_size=32")
    chosen = [it for it in items if it.form in forms]
    per_item: dict[str, bool] = {}
    for i in range(0, len(chosen), batch_size):
        batch = chosen[i:i + batch_size]
        verdicts = list(scorer(batch))
        if len(verdicts) != len(batch):
            raise BenchmarkError(f"The scorer returned {len(verdicts)} verdicts for {len(batch)} "
                                 f"items (first {batch[0].item_id!r}).\n  expected: one bool per "
                                 "item, in order\n  fix: fix the scorer")
        per_item.update((it.item_id, bool(v)) for it, v in zip(batch, verdicts))
    by_fact: dict[str, list[bool]] = {}
    for it in chosen:
        by_fact.setdefault(it.fact_id, []).append(per_item[it.item_id])
    agg = {"all": all, "any": any, "majority": lambda v: sum(v) * 2 > len(v)}[aggregate]
    return KnownFilter(per_item, {f: bool(agg(v)) for f, v in by_fact.items()}, aggregate)


@dataclass(frozen=True)
class EditSet:
    """Facts to edit: ``known`` (K drawn from the known facts) + ``random`` (M drawn from all the
    other candidates, known or not). Ids are fact ids; order is the draw order.

    Fields:
        known: the K known fact ids.
        random: the M random fact ids (disjoint from ``known``).
        seed: the seed both draws used.
    """

    known: tuple[str, ...]
    random: tuple[str, ...]
    seed: int

    @property
    def fact_ids(self) -> tuple[str, ...]:
        return self.known + self.random

    def __len__(self) -> int:
        return len(self.known) + len(self.random)

    def save(self, path: str | Path) -> None:
        atomic_write_json(Path(path), {"seed": self.seed, "known": list(self.known),
                                       "random": list(self.random)})

    @classmethod
    def load(cls, path: str | Path) -> "EditSet":
        try:
            d = json.loads(Path(path).read_text("utf-8"))
            return cls(tuple(d["known"]), tuple(d["random"]), int(d["seed"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise BenchmarkError(f"Cannot read edit set {str(path)!r}: {err}.\n  expected: JSON "
                                 "with seed, known, random\n  fix: rewrite it with "
                                 "EditSet.save") from None


def build_edit_set(candidates: Iterable[str], known: Iterable[str], *, k: int = 200, m: int = 300,
                   seed: int = 0, allow_fewer: bool = False) -> EditSet:
    """Draw ``k`` known facts and ``m`` random others from ``candidates`` (fact ids), reproducibly.

    Both draws sort their pools first, so the result depends only on the sets and the seed.
    ``known`` ids outside ``candidates`` are ignored. With ``allow_fewer=False`` (default), too
    few facts raise :class:`BenchmarkError`; with True, the draws take what there is."""
    pool = sorted(set(candidates))
    known_pool = sorted(set(known) & set(pool))
    if min(k, m) < 0:
        raise BenchmarkError(f"k={k}, m={m}.\n  expected: non-negative counts\n  fix: k=200, m=300")
    if not allow_fewer and (len(known_pool) < k or len(pool) - k < m):
        raise BenchmarkError(f"Cannot draw {k} known + {m} random facts from {len(known_pool)} "
                             f"known among {len(pool)} candidates.\n  expected: at least k known "
                             "and k+m candidates\n  fix: lower k/m, build a larger benchmark, or "
                             "pass allow_fewer=True")
    rng = random.Random(seed)
    chosen_known = rng.sample(known_pool, min(k, len(known_pool)))
    rest = sorted(set(pool) - set(chosen_known))
    chosen_random = rng.sample(rest, min(m, len(rest)))
    return EditSet(tuple(chosen_known), tuple(chosen_random), int(seed))
