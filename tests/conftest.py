"""Shared test setup.

No test may touch the network: the Hugging Face hub and ``datasets`` run offline. These are set at
import, before any test module imports ``datasets`` (which reads them once, when imported).
"""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"


#: Small fixtures committed with the tests (sources and licences in tests/data/README.md).
TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def test_data() -> Path:
    """The committed fixtures: corpora excerpts, the authors' golden arrays, the stories260K model."""
    return TEST_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Data gaincell did not make (corpora, the authors' golden arrays, stories260K, task files):
    ``$GAINCELL_DATA``, else ``../shared/data``; without either the test skips and says how to point at it."""
    from gaincell.datadir import HOW_TO_POINT, data_dir

    folder = data_dir()
    if folder is None:
        pytest.skip(f"needs the shared data folder: {HOW_TO_POINT}")
    return folder


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
