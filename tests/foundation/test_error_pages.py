"""Every error class names a docs page that exists, and the errors index lists every class."""

import importlib
import pkgutil
from pathlib import Path

import lalm_interp
from lalm_interp.errors import LalmInterpError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "errors"


def all_error_classes():
    for m in pkgutil.walk_packages(lalm_interp.__path__, "lalm_interp."):
        if ".cli" in m.name or m.name.endswith("__main__"):
            continue
        importlib.import_module(m.name)
    seen, todo = set(), [LalmInterpError]
    while todo:
        c = todo.pop()
        for s in c.__subclasses__():
            if s not in seen and s.__module__.startswith("lalm_interp"):
                seen.add(s)
                todo.append(s)
    return seen


def test_every_error_page_exists_and_is_indexed():
    classes = all_error_classes()
    assert len(classes) >= 10
    index = (DOCS / "index.md").read_text()
    for c in classes:
        assert (DOCS / f"{c.page}.md").is_file(), f"{c.__name__}: docs/errors/{c.page}.md is missing"
        assert c.page != "index", f"{c.__name__} has no page of its own"
        assert f"({c.page}.md)" in index, f"docs/errors/index.md does not link {c.page}.md ({c.__name__})"
