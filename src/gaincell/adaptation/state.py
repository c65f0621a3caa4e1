"""The training loop's resumable state: checkpoints on disk, written whole or not at all, and read back checked.

A checkpoint ``output_dir/checkpoints/step-XXXXXXXX`` holds the weights (safetensors), the optimizer,
schedule, callbacks and every process's RNG states (safetensors + JSON, :mod:`gaincell.adaptation.snapshot`:
nothing in it is ever unpickled) plus ``trainer_state.json``: the step, the metrics, the settings, the
chip config and the size and sha256 of every file, so a damaged or altered one is refused by name
rather than resumed from, and a resume with other settings is refused naming the field. It is written
into a temporary directory renamed into place when complete (:func:`gaincell.atomic.atomic_directory`),
so a crash never leaves a partial one where resume looks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gaincell.adaptation.settings import TrainConfig
from gaincell.adaptation.snapshot import read_state, rng_state, set_rng_state, write_state
from gaincell.atomic import MANIFEST, WRITER_NOTE, atomic_directory, file_sha256
from gaincell.errors import GainCellError, first_line
from gaincell.validation import as_json, first_difference

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
_CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
#: Settings a resumed run may change: none of them changes a step's update.
_FREE_ON_RESUME = ("max_steps", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints", "log_every",
                   "keep_best_checkpoint", "log_jsonl", "report_to", "progress_bar")  # fmt: skip


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
    """Read a checkpoint's ``trainer_state.json`` and check every file it lists is there, whole, with the
    sha256 it was written with, and that it holds nothing else (a planted file is refused, never read).

    A damaged or incomplete checkpoint raises :class:`GainCellError` naming the path.
    """
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
        step = int(state["step"])
        files = digest_pairs(state["files"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise GainCellError(f"corrupt checkpoint {path}: unreadable {STATE_FILE} ({type(error).__name__})") from error
    check_files(path, files, f"corrupt checkpoint {path}", ignore=(STATE_FILE,))
    if step < 0:
        raise GainCellError(f"corrupt checkpoint {path}: negative step {step}")
    return state


def file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """The size and sha256 of every file under ``folder``, by path relative to it (what :func:`check_files` checks),
    but the writer note of a folder still being written (it is gone once the folder is in place)."""
    return {
        str(file.relative_to(folder)): {"size": file.stat().st_size, "sha256": file_sha256(file)}
        for file in sorted(folder.rglob("*"))
        if file.is_file() and file.relative_to(folder) != Path(WRITER_NOTE)
    }


def digest_pairs(files: dict) -> dict[str, tuple[int, str]]:
    """:func:`file_digests`' entries as ``name -> (size, sha256)`` (a malformed one raises KeyError or ValueError)."""
    return {str(name): (int(entry["size"]), str(entry["sha256"])) for name, entry in dict(files).items()}


def check_files(folder: Path, files: dict[str, tuple[int, str]], what: str, ignore: tuple[str, ...] = ()) -> None:
    """Raise one line starting with ``what`` unless ``folder`` holds exactly ``files`` (``name -> (size, sha256)``),
    each whole: a missing, changed or planted file is named."""
    files = {name: entry for name, entry in files.items() if name != MANIFEST}  # gaincell's note of who wrote what
    present = {str(file.relative_to(folder)) for file in folder.rglob("*") if file.is_file()} - set(ignore) - {MANIFEST}
    planted = sorted(present - set(files))
    if planted:
        raise GainCellError(f"{what}: {planted[0]} is not one of the files it was written with")
    for name, (size, digest) in files.items():
        file = folder / name
        if not file.is_file() or file.stat().st_size != size:
            raise GainCellError(f"{what}: {name} is missing or has the wrong size")
        if file_sha256(file) != digest:
            raise GainCellError(f"{what}: {name} does not match its sha256 (the file changed)")


def remove_partial_checkpoints(output_dir: Path) -> None:
    """Delete what a killed run left half-written (temporary or set-aside checkpoint folders)."""
    folder = output_dir / CHECKPOINT_DIR
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith(".step-"):
                shutil.rmtree(path, ignore_errors=True)


def _prune_checkpoints(output_dir: Path, keep: int, keep_best: bool = True) -> None:
    """Delete all checkpoints but the last ``keep`` and, with ``keep_best``, the one with the lowest finite
    eval loss: a real model's checkpoint holds weights and two optimiser moments (1.6 GB for a 135M model),
    so keeping every one fills a disk in a few steps."""
    folder = output_dir / CHECKPOINT_DIR
    found = sorted(
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if path.is_dir() and (match := _CHECKPOINT_NAME.match(path.name))
    )
    kept = {path for _, path in found[-keep:]}
    if keep_best:
        best = min(((loss, path) for _, path in found if (loss := _eval_loss(path)) is not None), default=None)
        if best is not None:
            kept.add(best[1])
    for _, path in found:
        if path in kept:
            continue
        doomed = path.with_name(f".{path.name}.deleting")
        path.rename(doomed)  # atomic: a checkpoint folder is either complete or hidden
        shutil.rmtree(doomed, ignore_errors=True)


def _eval_loss(path: Path) -> float | None:
    """The checkpoint's eval loss when it has a finite one (a missing or damaged state file has none)."""
    try:
        loss = json.loads((path / STATE_FILE).read_text()).get("eval_loss")
    except (OSError, json.JSONDecodeError):
        return None
    return float(loss) if isinstance(loss, (int, float)) and loss == loss and abs(loss) != float("inf") else None


@dataclass
class TrainingState:
    """What a checkpoint restores besides the step: the model, optimiser, schedule and stateful callbacks."""

    model: Any
    optimizer: Any
    scheduler: Any
    callbacks: list = field(default_factory=list)


def save_checkpoint(accelerator, objects: TrainingState, output_dir: Path, step: int, state: dict) -> Path:
    """Write a checkpoint atomically; every process writes its RNG streams into one shared temp dir.

    Weights are safetensors, everything else :mod:`gaincell.adaptation.snapshot` (safetensors + JSON):
    resuming unpickles nothing.
    """
    from accelerate.utils import broadcast_object_list
    from safetensors.torch import save_model

    target = checkpoint_path(output_dir, step)
    with ExitStack() as stack:
        temporary = [str(stack.enter_context(atomic_directory(target))) if accelerator.is_main_process else None]
        temporary = Path(broadcast_object_list(temporary)[0])
        write_state(temporary, f"rng-{accelerator.process_index}", rng_state())
        if accelerator.is_main_process:
            save_model(accelerator.unwrap_model(objects.model), str(temporary / MODEL_FILE))
            write_state(temporary, "optimizer", objects.optimizer.state_dict())
            write_state(temporary, "scheduler", objects.scheduler.state_dict())
            for index, callback in enumerate(objects.callbacks):
                write_state(temporary, f"callback-{index}", callback.state_dict())
            if accelerator.scaler is not None:
                write_state(temporary, "grad-scaler", accelerator.scaler.state_dict())
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state = {**state, "accelerator_step": accelerator.step, "files": file_digests(temporary)}
            (temporary / STATE_FILE).write_text(json.dumps(state, indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        config = state["config"]
        _prune_checkpoints(output_dir, config["keep_checkpoints"], config.get("keep_best_checkpoint", True))
    return target


def load_checkpoint(accelerator, objects: TrainingState, path: Path, state: dict) -> None:
    """Restore every object from ``path`` (checked by :func:`read_checkpoint_state`); a checkpoint that does
    not load is named as corrupt."""
    from safetensors.torch import load_model

    try:
        load_model(accelerator.unwrap_model(objects.model), str(path / MODEL_FILE), device=str(accelerator.device))
        objects.optimizer.load_state_dict(read_state(path, "optimizer"))
        objects.scheduler.load_state_dict(read_state(path, "scheduler"))
        for index, callback in enumerate(objects.callbacks):
            callback.load_state_dict(read_state(path, f"callback-{index}"))
        if accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(read_state(path, "grad-scaler"))
        set_rng_state(read_state(path, f"rng-{accelerator.process_index}"))
        accelerator.step = int(state.get("accelerator_step", 0))
    except Exception as error:  # any failure to read it back means the checkpoint is damaged
        raise GainCellError(f"corrupt checkpoint {path}: {type(error).__name__}: {first_line(error, '')}") from error


def data_digest(blocks) -> str:
    """The sha256 of training blocks as int64 token ids with their shape: a resumed run must see the same
    tokens, not only as many blocks (a corpus edited between a kill and ``--resume`` would mix two datasets)."""
    import numpy as np

    array = np.ascontiguousarray(np.asarray(blocks.cpu() if hasattr(blocks, "cpu") else blocks), dtype=np.int64)
    digest = hashlib.sha256(repr(array.shape).encode())
    for row in range(0, len(array), 4096):  # a memory-mapped corpus is read a slice at a time
        digest.update(array[row : row + 4096].tobytes())
    return digest.hexdigest()


def check_resumable(
    state: dict, path: Path, config: TrainConfig, hardware: dict | None, world: int, n_blocks: int, data: str | None = None
) -> None:
    """Resume only what would replay the same steps: the same settings (``max_steps`` may grow, to extend
    a run; logging and checkpointing may change), chip config, processes and data (``data``: its
    :func:`data_digest`, checked against checkpoints that carry one)."""
    now = {key: value for key, value in as_json(dataclasses.asdict(config)).items() if key not in _FREE_ON_RESUME}
    defaults = as_json({f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING})
    saved = {key: value for key, value in state.get("config", {}).items() if key not in _FREE_ON_RESUME}
    saved = {**{key: defaults[key] for key in now.keys() - saved.keys() if key in defaults}, **saved}  # older runs
    changed = first_difference(
        {**saved, "hardware": state.get("hardware"), "num_processes": state.get("num_processes"),
         "train_blocks": state.get("train_blocks")},
        {**now, "hardware": as_json(hardware), "num_processes": world, "train_blocks": n_blocks},
    )  # fmt: skip
    if changed is not None:
        name, before, after = changed
        raise GainCellError(f"cannot resume {path} exactly: {name} was {before!r}, now {after!r}")
    saved_data = state.get("train_data_sha256")
    if data is not None and saved_data is not None and saved_data != data:
        raise GainCellError(
            f"cannot resume {path} exactly: the training data changed (sha256 of its token blocks was {saved_data[:12]}…, "
            f"now {data[:12]}…); resume with the data the run started with"
        )
