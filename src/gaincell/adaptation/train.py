"""The fine-tuning loop used by every stage of the adaptation recipe (SPEC §4).

It works for any ``transformers`` causal LM whose ``forward(input_ids, labels)`` returns ``.loss``
— GPT-2 as loaded, or with gain-cell attention put in. It is an ordinary loop on
``accelerate.Accelerator``, so ``accelerate launch`` or ``torchrun`` runs it with DDP or FSDP on
many GPUs and nodes with no code change: AdamW (no weight decay on 1-D parameters: biases,
LayerNorm gains and the per-head scalers), linear warm-up then cosine decay, gradient
accumulation, clipping, mixed precision when available, periodic evaluation, a progress bar and
one JSONL line of metrics per logged step.

Resuming is exact. The data order is a pure function of (seed, epoch) and of the optimizer step,
and a checkpoint holds the weights, the optimizer, the schedule, every process's RNG states and
the step; so a run killed and resumed takes the same steps, on the same blocks, with the same
dropout masks, as one that was never interrupted. The checkpoints and the checks that make a resume
safe are :mod:`gaincell.adaptation.state`; the settings are
:class:`~gaincell.adaptation.settings.TrainConfig`.

Units: ``batch_size`` is blocks per process per micro-batch; one optimizer step consumes
``batch_size * grad_accum * num_processes`` blocks.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gaincell.adaptation.batches import BatchOrder, block_rows, check_blocks, offset_positions
from gaincell.adaptation.data import check_context
from gaincell.adaptation.settings import TrainConfig
from gaincell.adaptation.state import (
    CHECKPOINT_DIR,
    TrainingState,
    check_resumable,
    data_digest,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_state,
    remove_partial_checkpoints,
    save_checkpoint,
)
from gaincell.atomic import atomic_file
from gaincell.errors import GainCellError
from gaincell.hf.embeddings import untie_embeddings
from gaincell.jsonl import read_jsonl
from gaincell.validation import fail


def learning_rate(step: int, config: TrainConfig) -> float:
    """Learning rate of the update that ends step ``step + 1`` (``step`` counts from 0).

    Linear warm-up to ``lr`` over ``warmup_steps`` updates, then a half cosine down to ``min_lr``
    at ``max_steps`` (the paper's schedule, SPEC §4).
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices (ndim >= 2) only, never biases, norms or per-head scalers."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    if not decay and not no_decay:
        raise GainCellError("model: has no trainable parameters")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class TrainResult:
    """What a finished run returns; the full history is in the JSONL file.

    ``loss`` is the last step's training loss (mean over its micro-batches and processes),
    ``eval_loss`` the last evaluation's; ``history`` holds the records logged by this call.
    """

    model: torch.nn.Module
    step: int
    loss: float | None
    eval_loss: float | None
    checkpoint: Path | None
    history: list[dict] = field(default_factory=list)


# -- the loop -------------------------------------------------------------------------------------


def _no_accelerator() -> bool:
    """True on a machine with no GPU (or other torch accelerator).

    ``Accelerator(cpu=True)`` is what makes a ``torchrun``-launched job on CPUs run as one
    gloo process group instead of as independent single-process runs.
    """
    probe = getattr(torch, "accelerator", None)
    return not (probe.is_available() if probe is not None else torch.cuda.is_available())


def _resolve_mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


@torch.no_grad()
def _evaluate(model, eval_data, config: TrainConfig, accelerator) -> float:
    """Mean token loss over the first ``eval_batches * batch_size * world`` evaluation blocks.

    Every process scores the same number of blocks (interleaved), then the sums are reduced.
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    n_blocks = len(eval_data)
    if config.eval_batches is not None:
        n_blocks = min(n_blocks, config.eval_batches * config.batch_size * world)
    n_blocks -= n_blocks % world
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for chunk in torch.arange(rank, n_blocks, world).split(config.batch_size):
        input_ids = block_rows(eval_data, chunk).to(accelerator.device)
        loss = model(input_ids=input_ids, labels=input_ids).loss
        total += torch.stack(
            [loss.double() * len(chunk), torch.tensor(len(chunk), dtype=torch.float64, device=accelerator.device)]
        )
    model.train(was_training)
    total = accelerator.reduce(total, reduction="sum")
    return float(total[0] / total[1])


def _call(callbacks: Sequence, hook: str, step: int, model, metrics: dict) -> None:
    for callback in callbacks:
        method: Callable | None = getattr(callback, hook, None)
        if method is not None:
            method(step, model, metrics)


def _stop_if_not_finite(output_dir: Path, step: int, metrics: dict) -> None:
    """A NaN or infinite loss is never trained on, checkpointed or saved: the run stops, naming where. Every
    process sees the same (gathered) losses, so all stop together."""
    for name in ("loss", "eval_loss"):
        value = metrics.get(name)
        if value is not None and not math.isfinite(value):
            raise GainCellError(
                f"{output_dir.name}: {name} is {value} at step {step}: training stopped (checkpoints kept are from before)"
            )


def _hyperparameters(config: TrainConfig) -> dict:
    """The config as trackers take it: TensorBoard's hparams accept only scalars and strings (not None or tuples)."""
    return {
        key: value if isinstance(value, (bool, int, float, str)) else str(value)
        for key, value in dataclasses.asdict(config).items()
    }


def _rewrite_log(path: Path, last_step: int) -> None:
    """On resume, drop log lines of steps after the checkpoint: they are about to be redone. A torn last line
    (a full disk or a kill mid-write) is dropped with them; a damaged line before it is refused (:mod:`gaincell.jsonl`)."""
    if not path.is_file():
        return
    kept = [record for record in read_jsonl(path) if record.get("step", 0) <= last_step]
    with atomic_file(path) as handle:
        handle.write("".join(json.dumps(record) + "\n" for record in kept))


def train(
    model: torch.nn.Module,
    train_data,
    eval_data,
    config: TrainConfig,
    output_dir: str | Path,
    *,
    resume: bool = False,
    callbacks: Sequence = (),
) -> TrainResult:
    """Fine-tune ``model`` on blocks of token ids; see the module docstring.

    ``train_data`` / ``eval_data`` are ``(n_blocks, block_size)`` integer tensors or numpy arrays
    (memory-mapped ones work); ``eval_data`` may be None. Checkpoints go to
    ``output_dir/checkpoints/step-XXXXXXXX`` every ``checkpoint_every`` steps and at the end.
    ``resume=True`` continues from the latest checkpoint there; without it the directory must hold
    none. Callbacks are objects with optional ``on_step_end(step, model, metrics)`` and
    ``on_eval(step, model, metrics)`` methods, called on every process with the unwrapped model;
    a callback that also has ``state_dict``/``load_state_dict`` is saved in the checkpoints.
    """
    from tqdm.auto import tqdm

    output_dir = Path(output_dir)
    accelerator = _accelerator(config, output_dir)
    if config.untie_embeddings:  # before the optimiser sees the parameters and a checkpoint is loaded
        untie_embeddings(getattr(model, "student", model))  # a distillation wrapper trains its student
    resumed, latest = _starting_point(accelerator, model, train_data, eval_data, config, output_dir, resume)
    objects = _prepare(accelerator, model, config, callbacks, latest if resume else None, resumed)
    model, optimizer, scheduler = objects.model, objects.optimizer, objects.scheduler
    step = int(resumed.get("step", 0))
    if resume:
        accelerator.print(f"resumed from {latest} at step {step}")
    run = _Run(accelerator, config, output_dir, train_data, eval_data, callbacks, resumed)
    run.objects = objects
    run.unwrapped = accelerator.unwrap_model(model)
    run.open_log(resume, step)
    progress = tqdm(
        total=config.max_steps,
        initial=step,
        desc="train",
        dynamic_ncols=True,
        disable=not (config.progress_bar and accelerator.is_local_main_process),
    )
    model.train()
    while step < config.max_steps:
        lr = scheduler.get_last_lr()[0]
        loss, grad_norm = _optimiser_step(model, optimizer, scheduler, run, step)
        step += 1
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        run.after_step(model, step, loss, lr, grad_norm)
    progress.close()
    if config.report_to:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return TrainResult(
        model=run.unwrapped, step=step, loss=run.loss, eval_loss=run.eval_loss, checkpoint=run.checkpoint or latest,
        history=run.history,
    )  # fmt: skip


def _accelerator(config: TrainConfig, output_dir: Path):
    """The accelerate state for one run (DDP/FSDP/CPU as launched), after checking the config's trackers."""
    from accelerate import Accelerator

    if not isinstance(config, TrainConfig):
        raise GainCellError(f"config must be a TrainConfig, got {type(config).__name__}")
    for tracker in config.report_to:
        if importlib.util.find_spec(tracker) is None:
            raise GainCellError(f"report_to: {tracker} is not installed (pip install {tracker})")
    return Accelerator(
        cpu=_no_accelerator(),
        gradient_accumulation_steps=config.grad_accum,
        mixed_precision=_resolve_mixed_precision(config.mixed_precision),
        log_with=list(config.report_to) or None,
        project_dir=str(output_dir),
    )


def _starting_point(accelerator, model, train_data, eval_data, config: TrainConfig, output_dir: Path, resume: bool):
    """Check the data and the checkpoint folder; returns (the resumed state or {}, the latest checkpoint)."""
    world = accelerator.num_processes
    if config.log_jsonl is not None and (output_dir / config.log_jsonl).is_dir():
        fail("log_jsonl", "a file name inside the output directory, not a folder", config.log_jsonl)
    check_blocks(train_data, "train_data", model, config.batch_size * world)
    check_context(model, int(train_data.shape[1]) + config.position_offset, "position_offset + block size")
    if eval_data is not None:
        check_blocks(eval_data, "eval_data", model, world)
    if accelerator.is_main_process:
        remove_partial_checkpoints(output_dir)
    latest = latest_checkpoint(output_dir)
    if not resume:
        if latest is not None:
            raise GainCellError(
                f"output_dir: {output_dir} already holds checkpoints; pass resume=True (gaincell adapt: --resume) "
                "or use a new directory"
            )
        return {}, None
    if latest is None:
        raise GainCellError(f"resume: no checkpoint in {output_dir / CHECKPOINT_DIR}")
    state = read_checkpoint_state(latest)
    check_resumable(state, latest, config, chip_config(model), world, len(train_data), data_digest(train_data))
    return state, latest


def chip_config(model) -> dict | None:
    """The gain-cell config a model trains with (None for a plain model): checkpoints carry it."""
    return getattr(getattr(model, "config", None), "gaincell", None)


def _prepare(accelerator, model, config: TrainConfig, callbacks: Sequence, checkpoint: Path | None, resumed: dict):
    """Seed, optimiser and schedule, handed to accelerate; the checkpoint's state loaded when resuming."""
    from accelerate.utils import set_seed

    set_seed(config.seed)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr, betas=config.betas)
    # The schedule is stepped by hand once per update, so it is not prepared (a prepared scheduler
    # advances once per process); the checkpoint keeps it beside the optimiser.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate(step, config) / config.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    stateful = [
        callback for callback in callbacks if hasattr(callback, "state_dict") and hasattr(callback, "load_state_dict")
    ]
    objects = TrainingState(model, optimizer, scheduler, stateful)
    if checkpoint is not None:
        load_checkpoint(accelerator, objects, checkpoint, resumed)
    return objects


def _optimiser_step(model, optimizer, scheduler, run: _Run, step: int) -> tuple[float, float | None]:
    """One update: grad_accum micro-batches, clipping, AdamW, schedule. Returns (mean loss, grad norm)."""
    accelerator, config = run.accelerator, run.config
    micro_losses = []
    for micro in range(config.grad_accum):
        index = step * config.grad_accum + micro
        input_ids = block_rows(run.train_data, run.order.indices(index)).to(accelerator.device)
        positions = offset_positions(config.position_offset, config.seed, index, accelerator.process_index, input_ids.shape)
        extra = {} if positions is None else {"position_ids": positions.to(accelerator.device)}
        with accelerator.accumulate(model):
            micro_loss = model(input_ids=input_ids, labels=input_ids, **extra).loss
            accelerator.backward(micro_loss)
        micro_losses.append(micro_loss.detach().float())
    grad_norm = None
    if config.grad_clip is not None:
        grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), config.grad_clip))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(accelerator.reduce(torch.stack(micro_losses).mean(), reduction="mean")), grad_norm


class _Run:
    """What one training run keeps between steps: data order, metrics log, evaluations, checkpoints."""

    def __init__(self, accelerator, config: TrainConfig, output_dir: Path, train_data, eval_data, callbacks, resumed):
        self.accelerator, self.config, self.output_dir = accelerator, config, output_dir
        self.train_data, self.eval_data, self.callbacks = train_data, eval_data, callbacks
        self.world = accelerator.num_processes
        self.order = BatchOrder(len(train_data), config.batch_size, config.seed, accelerator.process_index, self.world)
        self.block_size = int(train_data.shape[1])
        self.tokens_per_step = config.batch_size * config.grad_accum * self.world * self.block_size
        self.loss, self.eval_loss = resumed.get("loss"), resumed.get("eval_loss")
        self.started = time.perf_counter() - float(resumed.get("elapsed", 0.0))
        self.history: list[dict] = []
        self.checkpoint: Path | None = None
        self.log_path = output_dir / config.log_jsonl if config.log_jsonl else None
        self.data_sha256 = data_digest(train_data)
        self.unwrapped = None
        self.objects: TrainingState | None = None
        accelerator.print(
            f"{output_dir.name}: {self.tokens_per_step:,} tokens per optimiser step (batch_size {config.batch_size} "
            f"per process x grad_accum {config.grad_accum} x {self.world} process(es) x block {self.block_size})"
        )

    def open_log(self, resume: bool, step: int) -> None:
        if self.accelerator.is_main_process and self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            if resume:
                _rewrite_log(self.log_path, step)
            elif self.log_path.exists():
                self.log_path.unlink()
        if self.config.report_to:
            self.accelerator.init_trackers("gaincell", config=_hyperparameters(self.config))

    def after_step(self, model, step: int, loss: float, lr: float, grad_norm: float | None) -> None:
        """Callbacks, evaluation, the metrics log and checkpoints, each on its own schedule."""
        config, self.loss = self.config, loss
        metrics = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": step * self.tokens_per_step,
            "epoch": self.order.epoch(step * config.grad_accum),
            "elapsed": time.perf_counter() - self.started,
        }
        _call(self.callbacks, "on_step_end", step, self.unwrapped, metrics)
        final = step == config.max_steps
        if self.eval_data is not None and (final or (config.eval_every and step % config.eval_every == 0)):
            self.eval_loss = metrics["eval_loss"] = _evaluate(model, self.eval_data, config, self.accelerator)
            _call(self.callbacks, "on_eval", step, self.unwrapped, metrics)
        if final or step % config.log_every == 0 or "eval_loss" in metrics:
            self._log(metrics)
        _stop_if_not_finite(self.output_dir, step, metrics)
        if final or (config.checkpoint_every and step % config.checkpoint_every == 0):
            state = {
                "step": step, "loss": loss, "eval_loss": self.eval_loss, "elapsed": metrics["elapsed"],
                "tokens": metrics["tokens"], "num_processes": self.world, "train_blocks": len(self.train_data),
                "train_data_sha256": self.data_sha256,
                "block_size": self.block_size, "config": dataclasses.asdict(config), "hardware": chip_config(self.unwrapped),
            }  # fmt: skip
            self.checkpoint = save_checkpoint(self.accelerator, self.objects, self.output_dir, step, state)

    def _log(self, metrics: dict) -> None:
        self.history.append(metrics)
        if self.accelerator.is_main_process and self.log_path is not None:
            with self.log_path.open("a") as handle:
                handle.write(json.dumps(metrics) + "\n")
        if self.config.report_to:
            step = metrics["step"]
            self.accelerator.log({k: v for k, v in metrics.items() if k != "step" and v is not None}, step=step)
