"""The quickstart's code blocks run as written (in order, in one fresh interpreter)."""

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"


def test_quickstart_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 4
    script = tmp_path / "quickstart.py"  # a real file: nnsight traces need their source
    script.write_text("\n\n".join(blocks))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "P_clean" in r.stdout and "after the edit" in r.stdout
