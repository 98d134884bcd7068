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
