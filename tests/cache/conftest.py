import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from lalm_interp.cache import Store  # noqa: E402


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "cache")
