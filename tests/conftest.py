"""Shared test setup.

No test may touch the network: the Hugging Face hub and ``datasets`` run offline. These are set at
import, before any test module imports ``datasets`` (which reads them once, when imported).
"""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"


#: The tiny GPT-2 most tests train or convert: small enough for a step in milliseconds on one core.
TINY_GPT2 = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=300, n_positions=32, bos_token_id=0, eos_token_id=0)


@pytest.fixture(scope="session")
def pydoc_text() -> str:
    """Text every machine has: Python's bundled documentation (about 460 kB; the demo's default corpus)."""
    from gaincell.adaptation.data import default_corpus_text

    return default_corpus_text()


@pytest.fixture(scope="session")
def tokenizer(pydoc_text):
    """A byte-level BPE tokenizer of 300 tokens (the tiny GPT-2's vocabulary), trained once per session."""
    from gaincell.adaptation.data import train_bpe_tokenizer

    return train_bpe_tokenizer(pydoc_text[:60_000], vocab_size=300)


@pytest.fixture(scope="session")
def tiny_gpt2():
    """``tiny_gpt2(seed=0, **changes)``: a fresh tiny GPT-2 (``TINY_GPT2`` with ``changes``), seeded."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    def make(seed: int = 0, **changes):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(GPT2Config(**{**TINY_GPT2, **changes}))

    return make


@pytest.fixture(scope="module")
def shared_data(request) -> Path:
    """Data gaincell did not make (corpora, the authors' golden arrays, stories260K, task files):
    ``$GAINCELL_DATA``, else ``../shared/data``. A test module names what it reads with
    ``pytestmark = pytest.mark.needs_data("models/stories260K", ...)``: without the folder it skips naming that data and
    how to point at it; with the folder but without that data it fails (CI has the folder: nothing skips)."""
    from gaincell.datadir import HOW_TO_POINT, data_dir

    marker = request.node.get_closest_marker("needs_data")
    needed = marker.args if marker else ()
    folder = data_dir()
    if folder is None:
        pytest.skip(f"needs {', '.join(needed) or 'data'} from the shared data folder: {HOW_TO_POINT}")
    missing = [name for name in needed if not (folder / name).exists()]
    if missing:
        pytest.fail(f"the shared data folder {folder} lacks {', '.join(missing)}")
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
