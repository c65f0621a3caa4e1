"""The sweep tests' tiny model and text, built once per session (:mod:`sweep_files`)."""

import pytest
from sweep_files import make_files


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """A tiny grouped-query Llama (saved plain), its tokenizer and a text of ~1.5k tokens."""
    return make_files(tmp_path_factory.mktemp("sweep"))
