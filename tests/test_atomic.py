"""gaincell.atomic: the temporary a killed writer leaves beside its folder is removed by the next writer,
and nothing else is (issue 25: a `kill -9` of `gaincell demo --output PREV` left `.PREV.*.tmp` forever)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import gaincell
from gaincell.atomic import WRITER_NOTE, atomic_directory

SRC = str(Path(gaincell.__file__).resolve().parents[1])
WRITE = (
    "import sys, time\nfrom pathlib import Path\nfrom gaincell.atomic import atomic_directory\n"
    "with atomic_directory(sys.argv[1]) as tmp:\n    (Path(tmp) / 'half.bin').write_bytes(b'half')\n"
    "    print('writing', flush=True)\n    time.sleep(60)\n"
)


def _start_writer(target: Path) -> subprocess.Popen:
    """A process writing ``target`` through atomic_directory, stopped in the middle (it waits there)."""
    env = {**os.environ, "PYTHONPATH": SRC}
    writer = subprocess.Popen([sys.executable, "-c", WRITE, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    assert writer.stdout.readline().strip() == "writing"
    return writer


def _killed_writer(target: Path) -> Path:
    """The temporary a writer of ``target`` left when it was killed with SIGKILL (as `kill -9` does)."""
    writer = _start_writer(target)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    (left,) = _temporaries(target)
    return left


def _temporaries(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*.tmp"))


def _write(target: Path) -> None:
    with atomic_directory(target) as tmp:
        (tmp / "done.txt").write_text("complete\n")


def test_a_killed_writers_temporary_is_removed_by_the_next_writer_which_says_so(tmp_path, capsys):
    target = tmp_path / "PREV"
    left = _killed_writer(target)
    note = json.loads((left / WRITER_NOTE).read_text())
    assert (left / "half.bin").read_bytes() == b"half" and note["target"] == "PREV"
    _write(target)
    assert _temporaries(target) == [] and (target / "done.txt").read_text() == "complete\n"
    assert not (target / WRITER_NOTE).exists()  # the note never reaches the finished folder
    err = capsys.readouterr().err.splitlines()
    assert err == [f"gaincell: removed {left}, left unfinished by process {note['pid']}, which has ended"]


def test_a_running_writers_temporary_is_kept(tmp_path, capsys):
    target = tmp_path / "PREV"
    writer = _start_writer(target)
    try:
        (running,) = _temporaries(target)
        _write(target)
        assert _temporaries(target) == [running] and (running / "half.bin").is_file()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert capsys.readouterr().err == ""


def test_a_pid_now_running_another_process_is_an_ended_writer(tmp_path):
    """The note's pid alive, but started at another time (the pid was reused): its writer has ended."""
    target = tmp_path / "PREV"
    left = _killed_writer(target)
    note = json.loads((left / WRITER_NOTE).read_text())
    if note["start"] is None:  # no /proc: only the pid is known, and this one runs
        note["pid"] = os.getpid()
        (left / WRITER_NOTE).write_text(json.dumps(note))
        _write(target)
        assert _temporaries(target) == [left]
        return
    (left / WRITER_NOTE).write_text(json.dumps({**note, "pid": os.getpid()}))
    _write(target)
    assert _temporaries(target) == []


def test_a_folder_without_a_writer_note_is_left_alone(tmp_path):
    target = tmp_path / "PREV"
    garbled = _killed_writer(target)
    (garbled / WRITER_NOTE).write_text("{not json")
    foreign = tmp_path / ".PREV.abcd1234.tmp"  # the name gaincell would use, but nothing says gaincell wrote it
    foreign.mkdir()
    (foreign / "mine.txt").write_text("mine\n")
    _write(target)
    assert _temporaries(target) == sorted([foreign, garbled]) and (foreign / "mine.txt").read_text() == "mine\n"


def test_another_hosts_temporary_is_left_alone(tmp_path):
    """On a shared file system a pid of another machine says nothing about this one's processes."""
    target = tmp_path / "PREV"
    left = _killed_writer(target)
    note = json.loads((left / WRITER_NOTE).read_text())
    (left / WRITER_NOTE).write_text(json.dumps({**note, "host": "another-host"}))
    _write(target)
    assert _temporaries(target) == [left]


def test_another_targets_temporary_is_left_alone(tmp_path):
    """`.PREV.v2.XXXX.tmp` (the folder PREV.v2's) matches `.PREV.*.tmp`; only PREV.v2's writer removes it."""
    other = _killed_writer(tmp_path / "PREV.v2")
    _write(tmp_path / "PREV")
    assert other.is_dir()
    _write(tmp_path / "PREV.v2")
    assert not other.exists()
