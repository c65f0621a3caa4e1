"""What a sweep reads: saved model directories and texts, checked when the spec is read, read by the workers."""

from __future__ import annotations

import json
from pathlib import Path

from gaincell.errors import GainCellError


def check_model_dir(model: str, name: str = "model") -> dict:
    """A ``save_pretrained`` directory; returns its config.json."""
    path = Path(model).expanduser()
    if not path.is_dir():
        raise GainCellError(f"{name}: no such directory {model} (a saved model directory)")
    if not (path / "config.json").is_file():
        raise GainCellError(f"{name}: {model} has no config.json (not a save_pretrained directory)")
    return json.loads((path / "config.json").read_text())


def check_text(text: str, name: str) -> None:
    path = Path(text).expanduser()
    if not path.is_file() and not (path.is_dir() and any(path.rglob("*.txt"))):
        raise GainCellError(f"{name}: no such text file (or folder of .txt files): {text}")


def read_text(path: str, name: str = "text") -> str:
    """A .txt file, or every .txt below a folder in sorted order, joined by blank lines (as ``gaincell eval``)."""
    root = Path(path).expanduser()
    files = [root] if root.is_file() else sorted(root.rglob("*.txt"))
    try:
        return "\n\n".join(file.read_text(encoding="utf-8") for file in files)
    except (OSError, UnicodeDecodeError) as error:
        raise GainCellError(f"{name}: cannot read {path} as UTF-8 text: {error}") from None
