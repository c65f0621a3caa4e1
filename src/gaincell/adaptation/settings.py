"""The settings of each adaptation stage (SPEC §4, §4.4): plain frozen dataclasses, checked when built.

No torch here, so a recipe or a sweep spec is read and checked without loading the model stack.
Each names its own fields in its errors (``max_steps must be ...``); the recipe puts the table's
name in front (``linear.max_steps``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from gaincell.validation import (
    FieldError,
    check_bool,
    check_choice,
    check_int,
    check_non_negative,
    check_positive,
    fail,
    is_int,
    is_number,
)

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
TRACKERS = ("tensorboard", "wandb")
TRANSFER_PARAMETERS = ("attention", "scalers")
TEACHERS = ("window", "full")
TRANSFER_CELLS = ("target", "linear")
TRANSFER_LOSSES = ("relative", "variance")


def _inside(path: Any) -> bool:
    """Whether ``path`` names a file below the folder it is relative to: a setting never writes elsewhere."""
    if not isinstance(path, str) or not path.strip():
        return False
    parts = PurePath(path).parts
    return not PurePath(path).is_absolute() and ".." not in parts and not path.startswith("~") and bool(parts)


@dataclass(frozen=True)
class CalibrationConfig:
    """The calibration loop of SPEC §4.2; every field has the paper's value as default."""

    max_iterations: int = 100
    tolerance: float = 1e-4
    damping_start: float = 1.0
    damping_end: float = 0.1
    damping_iterations: int = 50
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_iterations", "damping_iterations", "batch_size"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0)
        for name in ("tolerance", "damping_start", "damping_end"):
            check_positive(name, getattr(self, name))
        for name in ("damping_start", "damping_end"):
            if getattr(self, name) > 1:
                fail(name, "<= 1 (1 = the full correction)", getattr(self, name))

    def damping(self, iteration: int) -> float:
        """Linear decay from ``damping_start`` to ``damping_end`` over ``damping_iterations``, then flat."""
        progress = min(1.0, iteration / self.damping_iterations)
        return self.damping_start + (self.damping_end - self.damping_start) * progress


@dataclass(frozen=True)
class TrainConfig:
    """Everything the training loop needs besides the model and the data.

    ``eval_every`` / ``checkpoint_every`` of 0 mean "only at the end"; ``eval_batches`` of None
    evaluates on all evaluation blocks; ``log_jsonl`` is relative to the output directory (None: no
    file); ``report_to`` may add ``"tensorboard"`` and/or ``"wandb"``. ``mixed_precision="auto"``
    picks bf16 on a GPU that has it, fp16 on other GPUs and full precision on CPU.

    ``batch_size`` is per process, as in the authors' code (SPEC §4): one optimiser step sees
    batch_size × grad_accum × processes × block tokens; :func:`~gaincell.adaptation.train.train`
    prints that number at start.

    ``untie_embeddings`` (ours, off by default) gives a model whose output head shares the input
    embedding's matrix a copy of its own before the first step, as RADLADS did for small tied models;
    the checkpoints and the saved model are then untied.
    """

    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 100
    max_steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    mixed_precision: str = "auto"
    eval_every: int = 100
    eval_batches: int | None = 20
    checkpoint_every: int = 500
    keep_checkpoints: int = 1  # the last N checkpoints are kept ...
    keep_best_checkpoint: bool = True  # ... and the one with the lowest eval loss
    log_every: int = 10
    seed: int = 0
    log_jsonl: str | None = "metrics.jsonl"
    report_to: tuple[str, ...] = ()
    progress_bar: bool = True
    position_offset: int = 0  # each micro-batch's positions shifted by a random 0 … this (batches.offset_positions)
    untie_embeddings: bool = False  # a tied output head gets its own copy first (gaincell.hf.embeddings)

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        if not is_number(self.min_lr) or not 0 <= self.min_lr <= self.lr:
            fail("min_lr", f"a number in [0, lr={self.lr}]", self.min_lr)
        for name, minimum in (
            ("warmup_steps", 0),
            ("max_steps", 1),
            ("batch_size", 1),
            ("grad_accum", 1),
            ("eval_every", 0),
            ("checkpoint_every", 0),
            ("keep_checkpoints", 1),
            ("log_every", 1),
            ("seed", 0),
            ("position_offset", 0),
        ):
            check_int(name, getattr(self, name), minimum)
        if self.warmup_steps > self.max_steps:
            fail("warmup_steps", f"<= max_steps={self.max_steps}", self.warmup_steps)
        check_non_negative("weight_decay", self.weight_decay)
        betas = tuple(self.betas) if isinstance(self.betas, (tuple, list)) else ()
        if len(betas) != 2 or not all(is_number(beta) and 0 <= beta < 1 for beta in betas):
            fail("betas", "two numbers in [0, 1)", self.betas)
        object.__setattr__(self, "betas", betas)
        if self.grad_clip is not None and (not is_number(self.grad_clip) or self.grad_clip <= 0):
            fail("grad_clip", "a finite number > 0 or None", self.grad_clip)
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        if self.eval_batches is not None and not is_int(self.eval_batches, 1):
            fail("eval_batches", "an integer >= 1 or None", self.eval_batches)
        if self.log_jsonl is not None and not _inside(self.log_jsonl):
            fail("log_jsonl", "a file name inside the output directory (relative, no '..') or None", self.log_jsonl)
        report_to = (self.report_to,) if isinstance(self.report_to, str) else self.report_to
        if not isinstance(report_to, (tuple, list)) or any(tracker not in TRACKERS for tracker in report_to):
            fail("report_to", f"a subset of {', '.join(TRACKERS)}", self.report_to)
        for tracker in report_to:  # here, with the recipe, not when the stage that logs starts (after earlier stages ran)
            if importlib.util.find_spec(tracker) is None:
                raise FieldError("report_to", f": {tracker} is not installed (pip install {tracker})")
        object.__setattr__(self, "report_to", tuple(report_to))
        check_bool("progress_bar", self.progress_bar)
        check_bool("keep_best_checkpoint", self.keep_best_checkpoint)
        check_bool("untie_embeddings", self.untie_embeddings)


@dataclass(frozen=True)
class InitialiseConfig:
    """Data-driven scalers (SPEC §4.4): how much text the statistics come from, how wide the ranges are filled."""

    sigmas: float = 2.0
    batch_size: int = 8
    batches: int = 4
    output: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive("sigmas", self.sigmas)
        for name in ("batch_size", "batches"):
            check_int(name, getattr(self, name), 1)
        check_bool("output", self.output)
        check_int("seed", self.seed, 0)


@dataclass(frozen=True)
class TransferConfig(TrainConfig):
    """The attention-transfer stage: a :class:`TrainConfig` plus what may change and what it imitates.

    ``teacher = "window"`` imitates softmax restricted to the chip's window M (SPEC §3.1, what the
    student can see); ``"full"`` the original model. ``cells = "linear"`` trains on the linear model
    (§3.3) when the paper's stages follow; ``"target"`` on the chip itself. ``loss``: each layer's
    squared error over the teacher output's mean square (``"relative"``) or its per-channel variance
    (``"variance"``, :func:`gaincell.adaptation.transfer.transfer_loss`).
    """

    parameters: str = "attention"
    teacher: str = "window"
    cells: str = "target"
    loss: str = "relative"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, choices in (
            ("parameters", TRANSFER_PARAMETERS),
            ("teacher", TEACHERS),
            ("cells", TRANSFER_CELLS),
            ("loss", TRANSFER_LOSSES),
        ):
            check_choice(name, getattr(self, name), choices)
        if self.untie_embeddings:
            fail("untie_embeddings", "false in the transfer stage (it trains the attention only)", True)


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """End-to-end fine-tuning against the teacher's logits plus the LM loss (SPEC §4.4)."""

    kd_weight: float = 1.0
    lm_weight: float = 1.0
    temperature: float = 1.0
    teacher: str = "window"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("kd_weight", "lm_weight"):
            check_non_negative(name, getattr(self, name))
        check_positive("temperature", self.temperature)
        if self.kd_weight == 0 and self.lm_weight == 0:
            fail("lm_weight", "> 0 when kd_weight is 0 (nothing to learn from)", self.lm_weight)
        check_choice("teacher", self.teacher, TEACHERS)
