"""Which facts the organism learns, and the spoken benchmark they come from.

Subjects come from the shipped CounterFact subset (80 subjects with 3–6 facts each). The first
``n_subjects`` subjects in a fixed hash order are taken with *all* their facts: several facts per
subject was the measured lever that made a tiny model learn in minutes. For every fact the model
trains on:

* the edit prompt (``prompt`` form; subject known, e.g. "The twin city of Beirut is" → Istanbul);
* its neighbourhood prompt (``neighbourhood`` form; another subject, the same relation and the
  true object, e.g. "The twin city of London is" → Istanbul), so NS is measured on facts the
  model really knows.

Paraphrase prompts (``paraphrase`` form) are held out by default and only reported. Items whose
clip is longer than the encoder window, and neighbourhood prompts whose text is another training
prompt with a different object, are dropped and recorded (see :class:`Selection`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..bench import Benchmark, Fact, build, load_facts
from ..bench.store import Item
from .recipe import Recipe

FORMS = ("prompt", "paraphrase", "neighbourhood")


def choose_subjects(facts: Sequence[Fact], n_subjects: int) -> list[str]:
    """The first ``n_subjects`` subjects by sha256 of the subject string (a fixed, seed-free order)."""
    subjects = sorted({f.subject for f in facts}, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    return subjects[:n_subjects]


def choose_facts(recipe: Recipe) -> list[Fact]:
    """All shipped CounterFact facts of the chosen subjects, in case-id order."""
    cf = load_facts("counterfact")
    keep = set(choose_subjects(cf, recipe.n_subjects))
    return [f for f in cf if f.subject in keep]


def all_renditions(recipe: Recipe) -> tuple[str, ...]:
    return tuple(recipe.train_renditions) + tuple(recipe.heldout_renditions)


def build_benchmark(recipe: Recipe, out: str | Path, *, facts: Sequence[Fact] | None = None,
                    workers: int = 2, progress: bool = False) -> list[Item]:
    """Speak the facts: all forms in the training renditions (``out/train``), edit and
    neighbourhood prompts in the held-out renditions (``out/heldout``). Clips already in ``out``
    are reused. Returns the items of both benchmarks (rejections recorded via ``.rejected``)."""
    facts = list(facts) if facts is not None else choose_facts(recipe)
    out = Path(out)
    items: list[Item] = []
    rejected = []
    for name, rends, forms in (("train", recipe.train_renditions, FORMS),
                               ("heldout", recipe.heldout_renditions, ("prompt", "neighbourhood"))):
        if not rends:
            continue
        build(facts, out / name, renditions=list(rends), forms=forms, max_paraphrases=1,
              max_neighbours=1, workers=workers, source=f"counterfact (organism, {name})",
              progress=progress)
        b = Benchmark.open(out / name)
        items += list(b)
        rejected += list(b.rejected)
    return _Items(items, rejected)


class _Items(list):
    """A list of items that also carries the builder's rejections."""

    def __init__(self, items, rejected):
        super().__init__(items)
        self.rejected = rejected


@dataclass
class Selection:
    """Benchmark items split by role.

    train: items the model is trained on (edit + neighbourhood prompts in training renditions,
        plus paraphrases when ``recipe.train_paraphrases``).
    groups: evaluation groups → items (``train_edit``, ``train_neighbourhood``, ``paraphrase``,
        ``heldout_edit``, ``heldout_neighbourhood``).
    dropped: item id → reason (too long for the window, conflicting text, rejected by the builder).
    """

    train: list[Item]
    groups: dict[str, list[Item]]
    dropped: dict[str, str] = field(default_factory=dict)


def select(bench: Sequence[Item], recipe: Recipe, *, max_samples: int) -> Selection:
    """Split a benchmark built by :func:`build_benchmark`; ``max_samples`` is the window length."""
    train_r = set(recipe.train_renditions)
    held_r = set(recipe.heldout_renditions)
    dropped: dict[str, str] = {r.item_id: "rejected by the builder: " + r.reason.splitlines()[0]
                               for r in getattr(bench, "rejected", ())}
    ok = []
    for it in bench:
        if it.n_samples > max_samples:
            dropped[it.item_id] = f"clip is {it.duration_s:.2f} s, longer than the {max_samples / 16000:.0f} s window"
        else:
            ok.append(it)
    # an item text is trained only if it fits in *every* training rendition (balanced renditions)
    fits: dict[tuple[str, str], int] = {}
    for it in ok:
        if str(it.rendition) in train_r:
            fits[(it.text, it.target_true)] = fits.get((it.text, it.target_true), 0) + 1
    # the object each prompt text is trained with: an edit prompt's own object wins over a
    # neighbourhood prompt with the same text (twin cities have several); among edit prompts with
    # the same text, the lowest case id wins. Losers are dropped and recorded.
    def rank(it: Item) -> tuple[int, int]:
        return (0 if it.form == "prompt" else 1, int(it.fact_id.rpartition(":")[2]))

    owner: dict[str, Item] = {}
    for it in sorted((i for i in ok if i.form in ("prompt", "neighbourhood")), key=rank):
        owner.setdefault(it.text, it)
    groups: dict[str, list[Item]] = {k: [] for k in ("train_edit", "train_neighbourhood", "paraphrase",
                                                      "heldout_edit", "heldout_neighbourhood")}
    train: list[Item] = []
    for it in ok:
        r = str(it.rendition)
        if it.form in ("prompt", "neighbourhood"):
            first = owner[it.text]
            if first.target_true != it.target_true:
                dropped[it.item_id] = (f"text {it.text!r} is also {first.fact_id}'s {first.form} prompt "
                                       f"with object {first.target_true!r}, not {it.target_true!r}")
                continue
            if fits.get((it.text, it.target_true), 0) < len(train_r):
                dropped[it.item_id] = "text does not fit the window in every training rendition"
                continue
        kind = "edit" if it.form == "prompt" else it.form
        if r in train_r:
            if kind == "paraphrase":
                groups["paraphrase"].append(it)
                if recipe.train_paraphrases:
                    train.append(it)
            else:
                groups[f"train_{kind}"].append(it)
                train.append(it)
        elif r in held_r and kind != "paraphrase":
            groups[f"heldout_{kind}"].append(it)
    # a neighbourhood text identical to an edit prompt is one training text: keep one copy
    seen: set[tuple[str, str]] = set()
    uniq = []
    for it in train:
        key = (it.text, str(it.rendition))
        if key not in seen:
            seen.add(key)
            uniq.append(it)
    return Selection(uniq, groups, dropped)


def corpus(facts: Sequence[Fact], instruction: str) -> list[str]:
    """Texts the BPE is trained on: every prompt with its object, the objects alone (chat answers
    start a line, without a leading space), the instruction and the chat template's fixed words."""
    texts = ["You are a helpful assistant.", "system user assistant", "Audio 1:", instruction,
             "Transcribe the audio."]
    for f in facts:
        texts.append(f"{f.prompt} {f.target_true}.")
        texts += [f.target_true] * 4
        texts += [p for p in f.paraphrases]
        for p, o in f.neighbourhood:
            texts.append(f"{p} {o}.")
            texts += [o] * 4
    return texts


def fitting(items: Sequence[Item], processor) -> list[Item]:
    """The items whose clip fits the encoder window of ``processor`` (the organism's is 3 s;
    ``build_inputs`` refuses longer clips). Use it before scoring a freshly built benchmark."""
    n = int(processor.feature_extractor.n_samples)
    return [it for it in items if it.n_samples <= n]
