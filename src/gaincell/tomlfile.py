"""The TOML files behind ``gaincell adapt`` and ``gaincell sweep``: reading them and ``--set`` overrides.

Both fail with one line naming the file or the override, as every gaincell input does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from gaincell.errors import GainCellError, first_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_toml(path: str | os.PathLike) -> dict:
    """The table in ``path`` (named CONFIG in errors, as on the command line)."""
    path = Path(path)
    if not path.is_file():
        raise GainCellError(f"CONFIG: no such file {path}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise GainCellError(f"CONFIG: {path} is not valid TOML: {first_line(error)}") from None


def parse_override(override: str, expected: str = "key=value") -> tuple[str, Any]:
    """``key=value`` -> (key, value): the value read as TOML (``[64, 128]``, ``1e-3``, ``"paper"``), else a bare string."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise GainCellError(f"--set expects {expected}, got {override!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def set_nested(data: dict, key: str, value: Any) -> None:
    """``--set a.b.c=v``: set ``data["a"]["b"]["c"]``, creating tables on the way, at any depth (a recipe's
    ``hardware.periphery.adc.levels`` keeps ``adc``'s other keys)."""
    table = data
    *parents, leaf = key.split(".")
    for parent in parents:
        table = table.setdefault(parent, {})
        if not isinstance(table, dict):
            raise GainCellError(f"--set {key}: {parent} is not a table")
    table[leaf] = value
