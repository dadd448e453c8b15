import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The CPUs are shared: one torch thread is ~30x faster here than oversubscribed defaults."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
