"""Known-1000 and CounterFact loaders, normalised into one frozen :class:`Fact` record.

Formats read:
- Known-1000 (ROME): ``known_id, subject, attribute, template, prediction, prompt, relation_id``.
- CounterFact, ROME's original: ``case_id, requested_rewrite{prompt, relation_id, subject,
  target_new{str}, target_true{str}}, paraphrase_prompts, neighborhood_prompts``.
- CounterFact, KnowEdit/MEND: ``case_id, prompt, subject, target_new, ground_truth,
  rephrase_prompt, locality_prompt, locality_ground_truth``.

The package ships small subsets of both (``lalm_interp/data/``, see its README for provenance);
give ``path=`` to read the full files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from .errors import BenchmarkError

SOURCES = ("counterfact", "known1000")
_SHIPPED = {"counterfact": "counterfact_subset.json", "known1000": "known1000_subset.json"}


@dataclass(frozen=True)
class Fact:
    """One fact (subject, relation, object), whatever the source format.

    Fields:
        case_id: the source's id (CounterFact ``case_id``, Known-1000 ``known_id``).
        subject: the subject string, verbatim as in ``prompt``.
        prompt: the full prompt with the subject filled in, e.g. "Metropolitan France's capital
            is" (no trailing space; the object follows).
        relation_template: ``prompt`` with the subject replaced by ``{}``.
        relation_id: Wikidata property (``"P36"``) when the source gives one, else ``"t:"`` + 8 hex
            of the template's sha256 (facts with the same template share it).
        target_true: the true object, e.g. "Paris".
        target_new: CounterFact's counterfactual object; ``None`` for Known-1000.
        paraphrases: paraphrase prompts about the same subject and relation.
        neighbourhood: ``(prompt, true object)`` pairs about *other* subjects with the same
            relation and object (their subject is not known; kept as text).
        source: ``"counterfact"`` or ``"known1000"``.
    """

    case_id: int
    subject: str
    prompt: str
    relation_template: str
    relation_id: str
    target_true: str
    target_new: str | None = None
    paraphrases: tuple[str, ...] = ()
    neighbourhood: tuple[tuple[str, str], ...] = ()
    source: str = "counterfact"

    @property
    def fact_id(self) -> str:
        """``"<source>:<case_id>"``, unique across sources."""
        return f"{self.source}:{self.case_id}"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["paraphrases"] = list(self.paraphrases)
        d["neighbourhood"] = [list(p) for p in self.neighbourhood]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Fact":
        d = dict(d)
        d["paraphrases"] = tuple(d.get("paraphrases", ()))
        d["neighbourhood"] = tuple((str(p), str(o)) for p, o in d.get("neighbourhood", ()))
        return cls(**d)


def template_relation_id(template: str) -> str:
    """A relation id derived from a ``{}`` template: ``"t:"`` + first 8 hex of its sha256."""
    return "t:" + hashlib.sha256(" ".join(template.split()).encode("utf-8")).hexdigest()[:8]


def shipped_path(source: str) -> Path:
    """Path of the subset shipped with the package for ``source``."""
    _check_source(source)
    return Path(str(resources.files("lalm_interp") / "data" / _SHIPPED[source]))


def load_facts(source: str, path: str | Path | None = None, *, limit: int | None = None
               ) -> list[Fact]:
    """Load ``source`` (``"counterfact"`` or ``"known1000"``) from ``path`` (default: the shipped
    subset), in file order, at most ``limit`` facts."""
    _check_source(source)
    return (load_counterfact if source == "counterfact" else load_known1000)(path, limit=limit)


def load_known1000(path: str | Path | None = None, *, limit: int | None = None) -> list[Fact]:
    """Known-1000 in ROME's format (``known_1000.json``)."""
    p = Path(path) if path else shipped_path("known1000")
    out = []
    for n, r in enumerate(_read_records(p)):
        try:
            subject, prompt = _clean(r["subject"]), _clean(r["prompt"])
            out.append(Fact(case_id=int(r["known_id"]), subject=subject, prompt=prompt,
                            relation_template=_template(prompt, subject, p, n),
                            relation_id=str(r.get("relation_id") or
                                            template_relation_id(_template(prompt, subject, p, n))),
                            target_true=r["attribute"].strip(), source="known1000"))
        except (KeyError, TypeError, AttributeError) as err:
            raise _field_error(p, n, err, "known_id, subject, attribute, prompt") from None
    return out[:limit] if limit is not None else out


def load_counterfact(path: str | Path | None = None, *, limit: int | None = None) -> list[Fact]:
    """CounterFact in ROME's format or KnowEdit's (detected per record)."""
    p = Path(path) if path else shipped_path("counterfact")
    out = []
    for n, r in enumerate(_read_records(p)):
        try:
            out.append(_rome_cf(r, p, n) if "requested_rewrite" in r else _knowedit_cf(r, p, n))
        except (KeyError, TypeError, AttributeError) as err:
            raise _field_error(p, n, err, "ROME (requested_rewrite, paraphrase_prompts, "
                               "neighborhood_prompts) or KnowEdit (prompt, subject, target_new, "
                               "ground_truth, rephrase_prompt, locality_prompt)") from None
        if limit is not None and len(out) >= limit:
            break
    return out


def _rome_cf(r: dict, p: Path, n: int) -> Fact:
    rw = r["requested_rewrite"]
    subject = _clean(rw["subject"])
    template = _clean(rw["prompt"])
    if "{}" not in template:
        raise BenchmarkError(f"{p} record {n}: requested_rewrite.prompt {template!r} has no '{{}}'."
                             "\n  expected: a template like '{} is a citizen of'\n  fix: check "
                             "the file is ROME's counterfact.json")
    true = rw["target_true"]["str"].strip()
    neigh = []
    for q in r.get("neighborhood_prompts", ()):
        if isinstance(q, dict):
            neigh.append((_clean(q["prompt"]), str(q.get("target", true)).strip()))
        else:
            neigh.append((_clean(q), true))
    return Fact(case_id=int(r["case_id"]), subject=subject,
                prompt=template.replace("{}", subject, 1), relation_template=template,
                relation_id=str(rw.get("relation_id") or template_relation_id(template)),
                target_true=true, target_new=rw["target_new"]["str"].strip(),
                paraphrases=tuple(_clean(q) for q in r.get("paraphrase_prompts", ())),
                neighbourhood=tuple(neigh), source="counterfact")


def _knowedit_cf(r: dict, p: Path, n: int) -> Fact:
    subject, prompt = _clean(r["subject"]), _clean(r["prompt"])
    template = _template(prompt, subject, p, n)
    para = r.get("rephrase_prompt")
    paras = tuple(_clean(q) for q in (para if isinstance(para, list) else [para]) if q)
    loc, loc_gt = r.get("locality_prompt"), r.get("locality_ground_truth")
    neigh: tuple[tuple[str, str], ...] = ()
    if isinstance(loc, list):
        gts = loc_gt if isinstance(loc_gt, list) else [loc_gt] * len(loc)
        neigh = tuple((_clean(a), str(b).strip()) for a, b in zip(loc, gts) if a)
    elif loc:
        neigh = ((_clean(loc), str(loc_gt).strip()),)
    return Fact(case_id=int(r["case_id"]), subject=subject, prompt=prompt,
                relation_template=template, relation_id=str(r.get("relation_id") or
                                                             template_relation_id(template)),
                target_true=str(r["ground_truth"]).strip(), target_new=str(r["target_new"]).strip(),
                paraphrases=paras, neighbourhood=neigh, source="counterfact")


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def _template(prompt: str, subject: str, p: Path, n: int) -> str:
    # A subject missing from its prompt is kept (template without "{}"); the builder rejects the
    # fact's subject-bearing forms with a reason instead of aborting the whole load.
    return prompt.replace(subject, "{}", 1)


def _read_records(p: Path) -> Iterable[dict]:
    try:
        raw = p.read_text("utf-8")
    except OSError as err:
        raise BenchmarkError(f"Cannot read dataset file {str(p)!r}: {err.strerror}.\n  expected: "
                             "a JSON (list) or JSONL file\n  fix: check --data / path=") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise BenchmarkError(f"Dataset file {str(p)!r} is neither JSON nor JSONL: {err}.\n"
                                 "  expected: a list of records\n  fix: check the file is not "
                                 "truncated (e.g. a Git LFS pointer)") from None
    if isinstance(data, dict):
        data = list(data.values())
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise BenchmarkError(f"Dataset file {str(p)!r} does not hold a list of records.\n"
                             "  expected: [ {...}, ... ]\n  fix: pass the dataset file itself")
    return data


def _field_error(p: Path, n: int, err: Exception, expected: str) -> BenchmarkError:
    return BenchmarkError(f"{p} record {n} lacks or mistypes a field ({type(err).__name__}: {err})."
                          f"\n  expected: {expected}\n  fix: check the file's format / --source")


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise BenchmarkError(f"Unknown dataset source {source!r}.\n  expected: one of "
                             f"{', '.join(SOURCES)}\n  fix: --source counterfact|known1000")
