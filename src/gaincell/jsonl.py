"""Reading the ``.jsonl`` logs gaincell appends to (training metrics, sweep results), torn lines included.

A log is appended one line per write. A kill or a full disk can leave the last line torn (a partial
line, not valid JSON); before this module each reader treated that differently: ``--resume`` of a
training stage failed with a raw ``JSONDecodeError`` on every try, and a sweep dropped every line after
the first bad one, valid lines included. One rule now, in one function: a torn *last* line is dropped
(and, when the caller is about to append again, cut from the file, so the next line starts clean); a
bad line anywhere else is not a torn write but a damaged file, refused in one line naming it, and no
valid line is ever deleted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gaincell.errors import GainCellError


def read_jsonl(path: str | os.PathLike, *, repair: bool = False) -> list:
    """The records of ``path``, one per non-empty line ([] if it does not exist).

    A last line that is not valid JSON (a torn write) is left out; with ``repair`` it is also cut from
    the file (the valid lines before it are kept byte for byte). A line that is not valid JSON before
    the last raises :class:`GainCellError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    records, good_end = [], 0
    for number, raw in enumerate(lines, start=1):
        last = number == len(lines)
        if not raw.strip():
            good_end += len(raw)
            continue
        try:
            records.append(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if not last:
                raise GainCellError(
                    f"{path}: line {number} of {len(lines)} is not valid JSON; only a torn last line (a write cut "
                    "short) is dropped, so this file was changed or damaged: restore it or start afresh"
                ) from None
            if repair:
                with open(path, "r+b") as handle:
                    handle.truncate(good_end)
                    handle.flush()
                    os.fsync(handle.fileno())
            break
        if last and not raw.endswith(b"\n") and repair:
            with open(path, "ab") as handle:  # a complete record cut just before its newline: finish the line
                handle.write(b"\n")
        good_end += len(raw)
    return records
