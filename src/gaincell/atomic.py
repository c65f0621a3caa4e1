"""Write files and directories so that a crash never leaves a half-written one behind, and never
replace what gaincell did not write.

Everything is written to a temporary sibling first and renamed into place at the end; a rename
within one file system is atomic, so readers see either the old complete version or the new one.
A folder is replaced only when it is empty or carries gaincell's own marker (:func:`check_replaceable`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gaincell.validation import fail


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator:
    """Open a temporary file beside ``target``; on success rename it over ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
    try:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_replaceable(field: str, target: str | os.PathLike, owned: Callable[[Path], bool], what: str) -> Path:
    """``target`` made absolute, if gaincell may replace it: absent, an empty folder, or a folder ``owned``
    recognises as its own (``what`` names that kind in the message). Anything else, a file, or the current
    folder or one above it, is refused before anything is written."""
    path = Path(target).expanduser().resolve()
    expected = f"a new or empty folder or {what}"
    if path.exists() and not path.is_dir():
        fail(field, expected, f"{target} (an existing file)")
    if path == Path.cwd().resolve() or path in Path.cwd().resolve().parents:
        fail(field, expected, f"{target} (the current folder or one above it, which gaincell never replaces)")
    if path.is_dir() and any(path.iterdir()) and not owned(path):
        held = ", ".join(sorted(entry.name for entry in path.iterdir())[:4])
        fail(field, expected, f"{target} (a folder gaincell did not write, holding {held})")
    return path


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target`` whole.

    An existing ``target`` is moved aside first and deleted only after the new one is in place; callers
    check first that it is theirs to replace (:func:`check_replaceable`).
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give it the permissions mkdir() would
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
