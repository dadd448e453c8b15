import pytest


@pytest.fixture(autouse=True, scope="module")
def _editors_on_one_thread(one_thread):
    """Every editor test module runs torch on one thread (tests/conftest.py)."""
