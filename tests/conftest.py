import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.cuda` tests skip cleanly unless a GPU is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (CUDA kernels)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread for the test (modules of tiny models opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``): as fast as two, and it avoids OpenMP
    oversubscription on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
