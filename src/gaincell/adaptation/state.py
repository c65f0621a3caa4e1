"""The training loop's resumable state: checkpoints on disk, written whole or not at all, and read back checked.

A checkpoint ``output_dir/checkpoints/step-XXXXXXXX`` holds what accelerate saves (weights,
optimizer, schedule, every process's RNG states) plus ``trainer_state.json``: the step, the
metrics, the settings and the size of every file, so a damaged one is refused by name rather than
resumed from. It is written into a temporary directory renamed into place when complete
(:func:`gaincell.atomic.atomic_directory`), so a crash never leaves a partial one where resume looks.
"""

from __future__ import annotations

import json
import re
import shutil
from contextlib import ExitStack
from pathlib import Path

from gaincell.adaptation.settings import TrainConfig
from gaincell.atomic import atomic_directory
from gaincell.errors import GainCellError, first_line

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
#: Settings that fix the data order and the RNG streams; a resumed run must keep them.
_RESUME_INVARIANTS = ("batch_size", "grad_accum", "seed")


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR / f"step-{step:08d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``output_dir`` (None if there is none)."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    found = [
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if path.is_dir() and (match := _CHECKPOINT_NAME.match(path.name))
    ]
    return max(found)[1] if found else None


def read_checkpoint_state(path: str | Path) -> dict:
    """Read a checkpoint's ``trainer_state.json`` and check every file it lists is there, whole.

    A damaged or incomplete checkpoint raises :class:`GainCellError` naming the path.
    """
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
        step = int(state["step"])
        files = dict(state["files"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise GainCellError(f"corrupt checkpoint {path}: unreadable {STATE_FILE} ({type(error).__name__})") from error
    for name, size in files.items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            raise GainCellError(f"corrupt checkpoint {path}: {name} is missing or has the wrong size")
    if step < 0:
        raise GainCellError(f"corrupt checkpoint {path}: negative step {step}")
    return state


def remove_partial_checkpoints(output_dir: Path) -> None:
    """Delete what a killed run left half-written (temporary or set-aside checkpoint folders)."""
    folder = output_dir / CHECKPOINT_DIR
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith(".step-"):
                shutil.rmtree(path, ignore_errors=True)


def _prune_checkpoints(output_dir: Path, keep: int) -> None:
    folder = output_dir / CHECKPOINT_DIR
    found = sorted(
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if path.is_dir() and (match := _CHECKPOINT_NAME.match(path.name))
    )
    for _, path in found[:-keep]:
        doomed = path.with_name(f".{path.name}.deleting")
        path.rename(doomed)  # atomic: a checkpoint folder is either complete or hidden
        shutil.rmtree(doomed, ignore_errors=True)


def save_checkpoint(accelerator, output_dir: Path, step: int, state: dict) -> Path:
    """Write a checkpoint atomically; every process writes its part into one shared temp dir."""
    from accelerate.utils import broadcast_object_list

    target = checkpoint_path(output_dir, step)
    with ExitStack() as stack:
        temporary = [str(stack.enter_context(atomic_directory(target))) if accelerator.is_main_process else None]
        temporary = Path(broadcast_object_list(temporary)[0])
        accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            files = {
                str(file.relative_to(temporary)): file.stat().st_size
                for file in sorted(temporary.rglob("*"))
                if file.is_file()
            }
            (temporary / STATE_FILE).write_text(json.dumps({**state, "files": files}, indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _prune_checkpoints(output_dir, state["config"]["keep_checkpoints"])
    return target


def load_checkpoint(accelerator, path: Path) -> None:
    """Restore every registered object from ``path``; a checkpoint that does not load is named as corrupt."""
    try:
        accelerator.load_state(str(path))
    except Exception as error:  # any failure to read it back means the checkpoint is damaged
        raise GainCellError(f"corrupt checkpoint {path}: {type(error).__name__}: {first_line(error, '')}") from error


def check_resumable(state: dict, path: Path, config: TrainConfig, world: int, n_blocks: int) -> None:
    """Resume only what would replay the same steps: same batch shape, seed, processes and data."""
    saved = state.get("config", {})
    for name in _RESUME_INVARIANTS:
        if saved.get(name) != getattr(config, name):
            raise GainCellError(
                f"cannot resume {path} exactly: {name} was {saved.get(name)!r}, now {getattr(config, name)!r}"
            )
    for name, now in (("num_processes", world), ("train_blocks", n_blocks)):
        if state.get(name) != now:
            raise GainCellError(f"cannot resume {path} exactly: {name} was {state.get(name)!r}, now {now!r}")
