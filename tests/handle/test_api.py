"""The public API: `import lalm_interp` stays light, every public name resolves and is documented on
docs/usage/api.md, and that page's code runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import lalm_interp

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "docs" / "usage" / "api.md"


def test_every_public_name_resolves_and_is_documented():
    text = API.read_text()
    for name in lalm_interp.__all__:
        assert getattr(lalm_interp, name) is not None
        if name != "__version__":
            assert f"`{name}" in text, f"{name} is not on docs/usage/api.md"
    assert set(lalm_interp.__all__) <= set(dir(lalm_interp))
    assert "usage/api.md" in (ROOT / "docs" / "index.md").read_text()


def test_import_is_light():
    code = ("import sys, time\nt = time.perf_counter()\nimport lalm_interp\n"
            "print(*('torch' in sys.modules, 'xarray' in sys.modules, 'nnsight' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False", "False"], out.stderr


def test_api_page_runs_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", API.read_text(), flags=re.S)
    assert len(blocks) >= 3
    script = tmp_path / "api_page.py"  # a real file: nnsight traces need their source
    script.write_text("\n\n".join(blocks) + "\nprint('shapes', tuple(h.shape), acts['text.layers.1.mlp'].dims)\n")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "shapes (1, " in r.stdout and "('position', 'hidden')" in r.stdout
