"""The checks every config, recipe and sweep makes, with one message shape for each kind of mistake.

A bad value: ``"<field> must be <expected>, got <value>"``; a key nobody reads:
``"<section>: unknown key 'x' (expected one of: a, b, c)"``. Each is a :class:`FieldError` (a
:class:`~gaincell.errors.GainCellError`) naming the field by the path the user wrote: a config
names its own fields (``max_steps``) and whoever read it from a table puts that table's path in
front (:func:`within`: ``linear.max_steps``, ``hardware.periphery.adc.levels``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from gaincell.errors import GainCellError


class FieldError(GainCellError):
    """A mistake at one dotted ``path``; ``problem`` is the rest of the message (" must be ...")."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}{problem}")
        self.path, self.problem = path, problem


def fail(name: str, expected: str, value: Any) -> NoReturn:
    raise FieldError(name, f" must be {expected}, got {value!r}")


def reject_unknown(section: str, data: Iterable[str], allowed: Iterable[str]) -> None:
    """Refuse keys of ``data`` (a table, or its keys) outside ``allowed``: a typo must not be ignored."""
    allowed = sorted(allowed)
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        keys = ", ".join(repr(key) for key in unknown)
        noun = "key" if len(unknown) == 1 else "keys"
        raise FieldError(section, f": unknown {noun} {keys} (expected one of: {', '.join(allowed)})")


def field_names(cls: type) -> tuple[str, ...]:
    """The keys a table for dataclass ``cls`` may hold."""
    return tuple(field.name for field in dataclasses.fields(cls))


@contextmanager
def within(section: str) -> Iterator[None]:
    """Name the field errors raised inside by their path under ``section`` (``max_steps`` -> ``linear.max_steps``)."""
    try:
        yield
    except FieldError as error:
        raise FieldError(f"{section}.{error.path}", error.problem) from None


def is_number(value: Any) -> bool:
    """A finite int or float (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    if maximum is None and not is_int(value, minimum):
        fail(name, f"an integer >= {minimum}", value)
    if maximum is not None and not (is_int(value, minimum) and value <= maximum):
        fail(name, f"an integer in [{minimum}, {maximum}]", value)


def check_number(name: str, value: Any) -> None:
    if not is_number(value):
        fail(name, "a finite number", value)


def check_positive(name: str, value: Any) -> None:
    if not is_number(value) or value <= 0:
        fail(name, "a finite number > 0", value)


def check_non_negative(name: str, value: Any) -> None:
    if not is_number(value) or value < 0:
        fail(name, "a finite number >= 0", value)


def check_limit(name: str, value: Any) -> None:
    """lm-eval's ``limit``: a count of items (>= 1) or a fraction of them (in (0, 1))."""
    if not is_number(value) or value <= 0:
        fail(name, "a number of items >= 1 or a fraction in (0, 1)", value)


def check_utf8_text(name: str, value: Any) -> None:
    """A string that encodes as UTF-8: a command-line argument with bytes that are not UTF-8 reaches Python as
    lone surrogates (``\\udcff``), which no tokenizer accepts."""
    check_string(name, value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = value[error.start].encode("utf-8", "surrogateescape")
        fail(name, "UTF-8 text", f"{value[: error.start]}... (byte 0x{bad.hex()} at character {error.start} is not UTF-8)")


def check_output_file(name: str, value: Any) -> None:
    """A path a command may write one file to, checked before any work: a file name (not empty, not a folder,
    not ``.``) whose nearest existing parent is a folder (missing folders are made when it is written)."""
    from pathlib import Path

    if not isinstance(value, str) or not value.strip():
        fail(name, "a file name to write the results to", value)
    path = Path(value).expanduser()
    if path.is_dir() or path.name in ("", ".", ".."):
        fail(name, "a file name to write the results to, not a folder", value)
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        fail(name, "a file in a folder", f"{value} ({parent} is a file)")


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        fail(name, f"one of {', '.join(choices)}", value)


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        fail(name, "true or false", value)


def check_string(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        fail(name, "a non-empty string", value)


def check_table(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        fail(name, "a table", value)


def as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples as lists), so a saved setting compares equal to its source."""
    return json.loads(json.dumps(value))


def first_difference(before: Any, after: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted field where two JSON trees differ, with both values (None if they are equal):
    what a refused resume names."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after), key=str):
            found = first_difference(before.get(key), after.get(key), f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    return None if before == after else (path, before, after)


def merge_tables(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` laid over it table by table at any depth (``periphery.adc.levels`` keeps
    ``periphery.adc.low``); a value that is not a table replaces what was there."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_tables(merged[key], value)
        else:
            merged[key] = value
    return merged


def json_ready(report: dict) -> dict:
    """``report`` as strict JSON can hold it: a NaN or infinite number becomes ``null`` and its dotted path
    is listed under ``"non_finite"`` with what it was, so a parser never meets ``NaN`` and a reader sees why."""
    reasons: dict[str, str] = {}

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            reasons[path] = f"{value} (not a finite number)"
            return None
        if isinstance(value, dict):
            return {key: clean(item, f"{path}.{key}" if path else str(key)) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item, f"{path}.{index}") for index, item in enumerate(value)]
        return value

    cleaned = clean(report, "")
    return {**cleaned, "non_finite": reasons} if reasons else cleaned
