"""Where data that gaincell did not make lives: one setting for tests, benchmarks, examples and commands.

Real corpora, the paper authors' arrays, pre-trained models and downstream-task files are never
committed; they sit in one folder: ``$GAINCELL_DATA`` when set, else ``../shared/data`` (from the
working directory, then from the repository root of a source checkout) when it exists.
"""

from __future__ import annotations

import os
from pathlib import Path

from gaincell.errors import GainCellError

ENVIRONMENT_VARIABLE = "GAINCELL_DATA"
HOW_TO_POINT = f"set {ENVIRONMENT_VARIABLE} to the shared data folder (e.g. {ENVIRONMENT_VARIABLE}=../shared/data)"
_REPOSITORY = Path(__file__).resolve().parents[2]


def data_dir() -> Path | None:
    """The shared data folder, or None when neither ``$GAINCELL_DATA`` nor ``../shared/data`` exists."""
    named = os.environ.get(ENVIRONMENT_VARIABLE)
    if named:
        return Path(named).expanduser() if Path(named).expanduser().is_dir() else None
    for candidate in (Path.cwd().parent / "shared" / "data", _REPOSITORY.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


#: The prefix a path in a recipe or sweep TOML starts with to live in the shared data folder.
DATA_PREFIX = "$GAINCELL_DATA/"


def expand_data_path(path: str, field: str) -> str:
    """``$GAINCELL_DATA/models/x`` -> that path inside :func:`data_dir` (which falls back to ../shared/data,
    unlike a shell's expansion); any other path unchanged. ``field`` names the setting in the error."""
    if not isinstance(path, str) or not path.startswith(DATA_PREFIX):
        return path
    return str(require_data_dir(field) / path[len(DATA_PREFIX) :])


def require_data_dir(what: str = "this") -> Path:
    """The shared data folder, or a one-line error saying how to point at it."""
    folder = data_dir()
    if folder is None:
        named = os.environ.get(ENVIRONMENT_VARIABLE)
        found = f"{ENVIRONMENT_VARIABLE}={named} is not a folder" if named else "no ../shared/data here"
        raise GainCellError(f"{what} needs the shared data folder ({found}): {HOW_TO_POINT}")
    return folder
