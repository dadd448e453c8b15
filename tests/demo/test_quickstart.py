"""The documented code runs as written: the quickstart's code blocks (in order, in one fresh
interpreter; written on the AudioLM handle) with a showcase edit that succeeds, and the README's
"Quick look" snippet."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "quickstart.md"
README = ROOT / "README.md"


def _run(blocks: list[str], tmp_path: Path, name: str) -> str:
    script = tmp_path / f"{name}.py"  # a real file: nnsight traces need their source
    script.write_text("\n\n".join(blocks))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def _probs(line: str) -> list[float]:
    return [float(x) for x in re.findall(r"= (\d+\.\d+)", line)]


def test_quickstart_runs_and_its_edit_succeeds(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 6
    out = _run(blocks, tmp_path, "quickstart")
    assert "P_clean" in out
    # the handle: its repr, cached activations that the store reads back and the trace agrees with
    assert "AudioLM('organism'" in out and "Activations(12 sites" in out
    assert "read back identical: True" in out and "trace equals cache: True" in out
    lo, hi = (float(x) for x in re.search(r"subject frames: (\d+\.\d+)-(\d+\.\d+) s", out).groups())
    assert 0 < lo < hi  # the subject's encoder frames, located in seconds
    # the edited layer is the one the quickstart's own trace points at
    layer = int(re.search(r"peak text MLP layer at the last token: (\d+)", out).group(1))
    assert 'make("rome", f"text.layers.{layer}.mlp.down"' in "".join(blocks) and 0 <= layer < 6
    lines = {ln.split(":")[0]: ln for ln in out.splitlines()
             if ln.startswith(("before the edit", "after the edit", "reverted"))}
    (t0, n0), (t1, n1) = _probs(lines["before the edit"]), _probs(lines["after the edit"])
    assert t0 > n0, lines["before the edit"]  # the model knows the fact
    assert n1 > t1 and n1 > 0.5, lines["after the edit"]  # the edit wins: P(new) up, P(true) down
    assert _probs(lines["reverted"])[0] == t0  # and the revert restores the trained weights


def test_readme_quick_look_runs(tmp_path):
    text = README.read_text()
    section = text[text.index("## Quick look"):]
    section = section[:section.index("\n## ", 5)] if "\n## " in section[5:] else section
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    out = _run(blocks, tmp_path, "quick_look")
    assert "Beirut" in out and "text.layers.2.mlp.down@in" in out
    p = float(re.search(r"P\('Istanbul'\) = (\d+\.\d+)", out).group(1))
    assert p > 0.5  # the organism knows the spoken fact
