"""One command at a time in a folder gaincell writes: an advisory lock held for the whole run.

Two ``gaincell adapt`` runs started on one fresh folder both found it empty and both wrote it: the second
replaced the first's stage models while ``run.json`` and the card still described the first. A command
that owns a folder takes :func:`folder_lock` before it writes there; a second one is refused in one line
naming the folder and the process that holds it. The operating system releases the lock when the process
ends, however it ends (``kill -9`` included), so a resumed run never meets a stale lock. ``flock`` on
Linux and macOS, ``msvcrt.locking`` of the file's first byte on Windows (not tested here); a lock on a
network file system is only as good as that file system's locking.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gaincell.errors import GainCellError

#: The lock file :func:`folder_lock` leaves in the folder (empty of meaning once its process has ended).
LOCK_FILE = ".gaincell.lock"


@contextmanager
def folder_lock(folder: str | os.PathLike, field: str, command: str, name: str = LOCK_FILE) -> Iterator[Path]:
    """Hold ``folder``'s lock (creating the folder) while the block runs; if another process holds it, raise
    :class:`GainCellError` naming ``field`` (the argument that named the folder) and ``command``. ``name``: the
    lock file, for a lock on one file in a shared folder (:func:`file_lock`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not _lock(descriptor):
            holder = _holder(descriptor)
            raise GainCellError(
                f"{field}: {folder} is in use by another {command} (process {holder}); wait for it to end or "
                "choose another folder"
            ) from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        yield folder
    finally:
        os.close(descriptor)  # releases the lock


@contextmanager
def file_lock(path: str | os.PathLike, field: str, command: str) -> Iterator[Path]:
    """Hold a lock on one output file (``.NAME.gaincell.lock`` beside it) while the block runs: two commands
    writing the same file are refused, two writing different files in one folder are not."""
    path = Path(path)
    lock = folder_lock(path.parent, field, command, name=f".{path.name}.gaincell.lock")
    try:
        lock.__enter__()
    except GainCellError as error:
        raise GainCellError(str(error).replace(f"{path.parent} is in use", f"{path} is being written", 1)) from None
    try:
        yield path
    finally:
        lock.__exit__(None, None, None)


def _lock(descriptor: int) -> bool:
    """Take the lock without waiting: False if another process holds it (any other failure raises)."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(descriptor: int) -> str:
    """The process id the holder wrote into the lock file ("unknown" where it cannot be read)."""
    try:
        return os.read(descriptor, 32).decode("ascii", "replace").strip() or "unknown"
    except OSError:  # Windows' locks also block reading the locked byte
        return "unknown"
