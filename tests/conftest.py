"""Shared test setup.

No test may touch the network: the Hugging Face hub and ``datasets`` run offline. These are set at
import, before any test module imports ``datasets`` (which reads them once, when imported).
"""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The small real corpora in ``../shared/data`` beside the project (see its README)."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared corpora not found at {path}")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules that train tiny models: on a small shared CPU that is far faster
    (2 threads made a tiny GPT-2 step 50x slower here) and bit-reproducible. Opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
