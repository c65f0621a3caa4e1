"""Checkpoints on disk: the last ``keep_checkpoints`` and the best by eval loss survive, nothing else.

A 135M model's checkpoint (weights and two optimiser moments) is 1.6 GB; keeping every one filled 6 GB in
eight steps. The folders here carry only ``trainer_state.json``: pruning reads nothing else.
"""

import json

import pytest

from gaincell.adaptation.settings import TrainConfig
from gaincell.adaptation.state import _prune_checkpoints, checkpoint_path
from gaincell.errors import GainCellError


def _checkpoints(root, losses: dict[int, float | None]) -> None:
    for step, loss in losses.items():
        folder = checkpoint_path(root, step)
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"step": step, "eval_loss": loss}))


def _left(root) -> list[int]:
    return sorted(int(path.name.split("-")[1]) for path in (root / "checkpoints").iterdir())


def test_the_last_and_the_best_are_kept(tmp_path):
    _checkpoints(tmp_path, {2: 3.0, 4: 2.5, 6: 2.7, 8: 2.9})
    _prune_checkpoints(tmp_path, keep=1)
    assert _left(tmp_path) == [4, 8]


def test_the_best_can_be_left_out_and_more_recent_ones_kept(tmp_path):
    _checkpoints(tmp_path, {2: 1.0, 4: 2.5, 6: 2.7, 8: 2.9})
    _prune_checkpoints(tmp_path, keep=2, keep_best=False)
    assert _left(tmp_path) == [6, 8]


def test_a_missing_or_not_finite_loss_is_never_the_best(tmp_path):
    _checkpoints(tmp_path, {2: None, 4: float("nan"), 6: 5.0, 8: 4.0})
    _prune_checkpoints(tmp_path, keep=1)
    assert _left(tmp_path) == [8]
    assert not [path for path in (tmp_path / "checkpoints").iterdir() if path.name.startswith(".")]


def test_the_default_keeps_little():
    config = TrainConfig()
    assert (config.keep_checkpoints, config.keep_best_checkpoint) == (1, True)
    with pytest.raises(GainCellError, match="keep_best_checkpoint"):
        TrainConfig(keep_best_checkpoint="yes")
