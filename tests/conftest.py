import pytest

from bdia.runtime import torch_threads


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models are dominated by per-op overhead: on a busy 2-core machine extra threads spin-wait."""
    with torch_threads(1):
        yield
