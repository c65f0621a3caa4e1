"""Write files and directories so that a crash never leaves a half-written one behind, and never
replace what gaincell did not write.

Everything is written to a temporary sibling first and renamed into place at the end; a rename
within one file system is atomic, so readers see either the old complete version or the new one.
A folder is replaced only when it is empty or carries gaincell's own marker (:func:`check_replaceable`).

The rule for what is gaincell's: every folder gaincell writes holds a small manifest, ``.gaincell-files``,
mapping each file it wrote there (relative path) to the writer (``gaincell.save``, ``gaincell demo``,
``gaincell eval --output``, ``gaincell hw --plot``). gaincell replaces or deletes only files its manifest
lists for that writer: a folder replaced whole (:func:`atomic_directory`) carries every other file into
the new version (a user's notes survive a new ``gaincell.save`` or demo); a single file
(:func:`check_own_file`) is overwritten only if listed, otherwise the command refuses in one line. A
folder from before the manifest existed keeps every file the new version does not write.

A folder being written lives in a hidden sibling, ``.NAME.XXXXXXXX.tmp``, until it is complete. A writer
killed outright (``kill -9``) cannot delete it, so the temporary carries a note of its writer,
``.gaincell-writer`` (process id, host, the process's start time); the next :func:`atomic_directory` for the
same target removes the temporaries whose writer ran on this host and has ended (:func:`_remove_dead_temporaries`).
A temporary without that note, of a running writer, or from another host is left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from glob import escape as glob_escape
from pathlib import Path

from gaincell.errors import GainCellError
from gaincell.validation import fail

#: The manifest of the files gaincell wrote in a folder: ``{relative path: writer}``.
MANIFEST = ".gaincell-files"
#: Files no writer lists but every gaincell folder may hold: the lock (:mod:`gaincell.lock`) and the manifest.
_OWN = frozenset({MANIFEST, ".gaincell.lock"})
#: The note in a temporary folder naming the process writing it (removed before the folder is swapped in).
WRITER_NOTE = ".gaincell-writer"


def read_manifest(folder: str | os.PathLike) -> dict[str, str] | None:
    """``folder``'s manifest (None where there is none or it is unreadable: nothing is known to be gaincell's)."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


def record_written(folder: str | os.PathLike, names: list[str], writer: str) -> None:
    """Add ``names`` (relative to ``folder``) to its manifest as written by ``writer``."""
    folder = Path(folder)
    manifest = read_manifest(folder) or {}
    manifest.update({str(name): writer for name in names})
    with atomic_file(folder / MANIFEST) as handle:
        json.dump(dict(sorted(manifest.items())), handle, indent=1)


def check_own_file(field: str, target: str | os.PathLike, writer: str) -> Path:
    """``target`` made absolute, if ``writer`` may write it: new, or listed in its folder's manifest as
    ``writer``'s. A file the user (or another gaincell command) wrote is refused before any work."""
    path = Path(target).expanduser().absolute()
    if str(target) == "" or path.is_dir():
        fail(field, "a file name (new, or one this command wrote before)", f"{target} (a folder)" if str(target) else "''")
    if path.exists() or path.is_symlink():
        manifest = read_manifest(path.parent) or {}
        if manifest.get(path.name) != writer:
            raise GainCellError(
                f"{field}: {target} exists and {writer} did not write it, so it is not replaced; choose a new file "
                "name, or remove it first"
            )
    return path


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
    if path.is_dir() and any(entry.name not in _OWN for entry in path.iterdir()) and not owned(path):
        held = ", ".join(sorted(entry.name for entry in path.iterdir())[:4])
        fail(field, expected, f"{target} (a folder gaincell did not write, holding {held})")
    return path


@contextmanager
def atomic_directory(target: str | os.PathLike, writer: str = "gaincell") -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target``.

    Every file written into it is listed in its manifest as ``writer``'s. Files of an existing ``target``
    that its manifest does not list (a user's) are carried into the new version; one whose name the new
    version also writes is refused (nothing replaced). The old ``target`` is moved aside and deleted only
    after the new one is in place; callers check first that it is theirs to replace (:func:`check_replaceable`).
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give it the permissions mkdir() would
    try:
        _write_writer_note(tmp, target)
        yield tmp
        (tmp / WRITER_NOTE).unlink(missing_ok=True)
        written = sorted(str(file.relative_to(tmp)) for file in tmp.rglob("*") if file.is_file() and file.name != MANIFEST)
        record_written(tmp, written, writer)
        old = None
        if target.exists():
            _carry_foreign(target, tmp, set(written), writer)
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _this_process() -> dict:
    """What tells this process apart from any other, now or later: pid, host, its start time and, on Linux, its
    pid namespace (a container on this host with the same name counts its pids apart)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": _start_time(os.getpid()),
        "pid_namespace": _pid_namespace(),
    }


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except (OSError, AttributeError):
        return None


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started, as Linux records it: the boot id and the start time in clock ticks since
    boot (field 22 of ``/proc/PID/stat``), so a pid reused by a later process, or after a reboot, gives another
    value. None where the process does not exist or there is no ``/proc`` (not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return f"{boot}:{fields[19]}"


def _write_writer_note(tmp: Path, target: Path) -> None:
    (tmp / WRITER_NOTE).write_text(json.dumps({**_this_process(), "target": target.name}) + "\n", encoding="utf-8")


def _writer_ended(note: dict) -> bool:
    """Whether the process a writer note names has certainly ended: it ran on this host and its pid is not
    running, or now belongs to a process that started at another time. Unknown is not ended."""
    pid = note.get("pid")
    if note.get("host") != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if note.get("pid_namespace") != _pid_namespace():
        return False
    start = note.get("start")
    if isinstance(start, str) and (now := _start_time(pid)) is not None:
        return now != start  # the pid names a later process
    if os.name == "nt":  # os.kill(pid, 0) would end the process there
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # running, under another user
        return False
    return False


def _remove_dead_temporaries(target: Path) -> None:
    """Delete the temporaries of ``target`` (``.NAME.*.tmp`` folders beside it) that a writer of this host left
    when it was killed (its note says so: :func:`_writer_ended`), saying so in one line on stderr."""
    prefix = f".{target.name}."
    for path in sorted(target.parent.glob(f"{glob_escape(prefix)}*.tmp")):
        if path.is_symlink() or not path.is_dir():
            continue
        try:
            note = json.loads((path / WRITER_NOTE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # no note (not gaincell's, or a writer that has only just started): left alone
        if not isinstance(note, dict) or note.get("target") != target.name or not _writer_ended(note):
            continue
        shutil.rmtree(path, ignore_errors=True)
        print(f"gaincell: removed {path}, left unfinished by process {note['pid']}, which has ended", file=sys.stderr)


def _carry_foreign(old: Path, new: Path, written: set[str], writer: str) -> None:
    """Move the files of ``old`` that ``writer`` did not write into ``new`` (same relative paths), keeping
    their manifest entries (a file another gaincell command wrote there stays that command's)."""
    manifest = read_manifest(old)
    foreign = []
    for file in sorted(old.rglob("*")):
        if not (file.is_file() or file.is_symlink()) or file.is_dir():
            continue
        name = str(file.relative_to(old))
        if name == MANIFEST:
            continue
        if manifest is None:  # from before the manifest: what the new version writes was gaincell's
            if name not in written:
                foreign.append(name)
        elif manifest.get(name) != writer:
            if name in written:
                raise GainCellError(
                    f"{old}: {name} was not written by {writer} and the new version would replace it; nothing was "
                    "replaced: move it away and run again"
                )
            foreign.append(name)
    for name in foreign:
        (new / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(old / name, new / name)
    kept = {name: manifest[name] for name in foreign if manifest and name in manifest}
    for other, names in _by_writer(kept).items():
        record_written(new, names, other)


def _by_writer(entries: dict[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, writer in entries.items():
        grouped.setdefault(writer, []).append(name)
    return grouped


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks (checkpoints and stage models, fetched wheels)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
