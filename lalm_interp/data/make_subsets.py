"""Rebuild the shipped subsets from the full public files (see README.md in this folder).

Run: ``python lalm_interp/data/make_subsets.py /path/to/shared/data``. Deterministic: the same
inputs give byte-identical outputs. Not imported by the package.
"""

from __future__ import annotations

import collections
import hashlib
import json
import sys
import unicodedata
from pathlib import Path

N_SUBJECTS = 80  # CounterFact subjects kept
MIN_FACTS, MAX_FACTS = 3, 6  # facts per kept subject (all of a subject's facts, capped)
N_KNOWN = 300  # Known-1000 records kept


def _latin_only(text: str) -> bool:
    return all(not ch.isalpha() or unicodedata.name(ch, "").startswith("LATIN") for ch in text)


def _rank(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def main(src: Path, dst: Path) -> None:
    cf = json.loads((src / "counterfact_knowedit_all.json").read_text("utf-8"))
    known = json.loads((src / "known_1000.json").read_text("utf-8"))
    by_subject: dict[str, list[dict]] = collections.defaultdict(list)
    for rec in cf:
        by_subject[rec["subject"]].append(rec)
    text_fields = ("prompt", "subject", "target_new", "ground_truth", "rephrase_prompt",
                   "locality_prompt", "locality_ground_truth")
    eligible = [
        s for s, recs in by_subject.items()
        if len(recs) >= MIN_FACTS and all(_latin_only(r[f]) for r in recs for f in text_fields)
    ]
    chosen = sorted(eligible, key=_rank)[:N_SUBJECTS]
    cf_subset = sorted(
        (r for s in chosen for r in sorted(by_subject[s], key=lambda r: r["case_id"])[:MAX_FACTS]),
        key=lambda r: r["case_id"],
    )
    subjects = set(chosen)
    overlap = [r for r in known if r["subject"] in subjects]
    rest = [r for r in known if r["subject"] not in subjects and _latin_only(r["prompt"] + r["attribute"])]
    known_subset = sorted(overlap + rest[: N_KNOWN - len(overlap)], key=lambda r: r["known_id"])
    dst.mkdir(parents=True, exist_ok=True)
    for name, data in (("counterfact_subset.json", cf_subset), ("known1000_subset.json", known_subset)):
        (dst / name).write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", "utf-8")
    print(f"counterfact: {len(cf_subset)} cases over {len(chosen)} subjects; "
          f"known1000: {len(known_subset)} records ({len(overlap)} share a CounterFact subject)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).parent)
