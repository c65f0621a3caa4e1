"""The checks every config, recipe and command makes, with one message shape.

Each failure is a :class:`~gaincell.errors.GainCellError` whose one line names the field, what it
must be and what it got: ``"<name> must be <expected>, got <value>"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NoReturn

from gaincell.errors import GainCellError


def fail(name: str, expected: str, value: Any) -> NoReturn:
    raise GainCellError(f"{name} must be {expected}, got {value!r}")


def is_number(value: Any) -> bool:
    """A finite int or float (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_int(name: str, value: Any, minimum: int) -> None:
    if not is_int(value, minimum):
        fail(name, f"an integer >= {minimum}", value)


def check_number(name: str, value: Any) -> None:
    if not is_number(value):
        fail(name, "a finite number", value)


def check_positive(name: str, value: Any) -> None:
    if not is_number(value) or value <= 0:
        fail(name, "a finite number > 0", value)


def check_non_negative(name: str, value: Any) -> None:
    if not is_number(value) or value < 0:
        fail(name, "a finite number >= 0", value)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        fail(name, f"one of {', '.join(choices)}", value)
