"""The strict stack (docs/developing/architecture.md): the import-linter contracts hold, every module
belongs to a layer, applications live in `lalm_interp.apps`, and library code imports at the top."""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "lalm_interp"
CONFIG = ROOT / ".importlinter"

# Modules allowed to import lalm_interp modules inside functions, with the reason (the architecture
# page lists the same exceptions).
LAZY_ALLOWED = {
    "loading.py": "refuses an unknown model name before importing torch (tested speed target)",
    "__init__.py": "the public API is exposed lazily so that `import lalm_interp` stays light",
    "speech/__init__.py": "importing lalm_interp.speech must not load libespeak-ng",
}
LAZY_ALLOWED_DIRS = {
    "apps/cli": "a subcommand's machinery is imported when it runs, so --help answers without torch",
}


def _layers() -> list[str]:
    cp = configparser.ConfigParser()
    cp.read(CONFIG)
    raw = cp["importlinter:contract:stack"]["layers"]
    return [line.strip() for line in raw.splitlines() if line.strip()]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports")
    assert exe, "lint-imports is not installed: pip install -e '.[test]' (import-linter is a test dependency)"
    out = subprocess.run([exe, "--config", str(CONFIG), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "BROKEN" not in out.stdout
    assert out.stdout.count("KEPT") >= 2


def test_every_top_level_module_is_in_a_layer():
    named = set()
    for layer in _layers():
        for part in layer.replace("|", ":").split(":"):
            named.add(part.strip())
    modules = {p.stem for p in PKG.glob("*.py") if p.stem not in ("__init__", "__main__")}
    modules |= {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    missing = sorted(modules - named)
    assert not missing, f"modules outside every layer of .importlinter (add them to a layer): {missing}"
    stale = sorted(named - modules)
    assert not stale, f".importlinter names modules that do not exist: {stale}"


def test_applications_live_in_apps():
    for name in ("cli", "demo", "demo_edits", "reproduce", "report"):
        assert not (PKG / f"{name}.py").exists() and not (PKG / name).is_dir(), name
        assert (PKG / "apps" / f"{name}.py").exists() or (PKG / "apps" / name).is_dir(), name
    assert _layers()[0] == "apps", "apps must be the top layer"


def _inner_internal_imports(path: Path) -> list[int]:
    tree = ast.parse(path.read_text())
    found: list[int] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if in_function and isinstance(child, ast.ImportFrom) and (
                    child.level > 0 or (child.module or "").startswith("lalm_interp")):
                found.append(child.lineno)
            visit(child, inside)

    visit(tree, False)
    return found


def test_library_code_imports_at_the_top():
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel in LAZY_ALLOWED or any(rel.startswith(d + "/") for d in LAZY_ALLOWED_DIRS):
            continue
        for line in _inner_internal_imports(path):
            offenders.append(f"lalm_interp/{rel}:{line}")
    assert not offenders, ("internal imports inside functions (move them to the top of the module; a cycle "
                           "means the code is in the wrong layer — docs/developing/architecture.md):\n"
                           + "\n".join(offenders))


@pytest.mark.parametrize("rel", sorted(LAZY_ALLOWED))
def test_lazy_allow_list_is_not_stale(rel):
    assert (PKG / rel).exists(), rel


def test_building_the_cli_parser_imports_no_torch():
    """`lalm-interp --help` and argument errors answer without loading torch or nnsight: the CLI defers
    a subcommand's machinery until it runs (the one exception to rule 4, with this reason)."""
    import sys

    code = ("import sys; from lalm_interp.apps.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'nnsight', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
