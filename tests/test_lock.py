"""gaincell.lock: one command at a time in a folder, released however its process ends."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import gaincell
from gaincell import GainCellError
from gaincell.lock import folder_lock

SRC = str(Path(gaincell.__file__).resolve().parents[1])
HOLD = (
    "import sys, time\nfrom gaincell.lock import folder_lock\n"
    "with folder_lock(sys.argv[1], 'f', 'x'):\n    print('held', flush=True)\n    time.sleep(60)\n"
)


def test_a_second_holder_is_refused_in_one_line_naming_the_first(tmp_path):
    with folder_lock(tmp_path / "run", "output_dir", "gaincell adapt"):
        with pytest.raises(GainCellError) as raised:
            with folder_lock(tmp_path / "run", "output_dir", "gaincell adapt"):
                pass
    message = str(raised.value)
    assert message == (
        f"output_dir: {tmp_path / 'run'} is in use by another gaincell adapt (process {os.getpid()}); "
        "wait for it to end or choose another folder"
    )
    with folder_lock(tmp_path / "run", "output_dir", "gaincell adapt"):  # released when the block ended
        pass


def test_the_lock_goes_with_a_killed_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GainCellError, match=f"process {holder.pid}"):
            with folder_lock(tmp_path, "output_dir", "gaincell adapt"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with folder_lock(tmp_path, "output_dir", "gaincell adapt"):
        pass
