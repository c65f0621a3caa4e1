"""The adaptation recipe of SPEC §4: a pre-trained softmax model onto the nonlinear gain-cell model.

1. **Linear stage** — convert to the linear hardware model (§3.3: same periphery, window and
   leakage as the target chip, linear cells), fine-tune it (scalers trainable) and record, per
   layer, head and scaler, an EMA (α = 0.1) of the mean and std after each scaler: the *targets*.
2. **Calibration** — switch to the nonlinear model with the same weights and, without gradients,
   move each scaler so its output statistics meet the targets:
   a ← a·(1 + d·(target_std/std − 1)),  b ← b + d·(target_mean − mean),
   with a damping d decaying linearly from 1.0 to 0.1 over 50 iterations; stop when every
   |error| < 1e-4 or after 100 iterations. With several processes each calibrates on its own
   batch and the scalers of the process with the lowest loss are broadcast to all.
3. **Nonlinear stage** — fine-tune the calibrated nonlinear model, quantisation-aware (STE).

:func:`adapt` runs the three from one :class:`Recipe`, read from a TOML file by ``gaincell adapt``;
the stage functions are public so notebooks and the demo can run them one by one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gaincell.adaptation.data import corpus_blocks, load_text_corpus, split_blocks
from gaincell.adaptation.initialise import InitialiseConfig, initialise_scalers
from gaincell.adaptation.train import TrainConfig, TrainResult, latest_checkpoint, train
from gaincell.adaptation.transfer import DistillConfig, TransferConfig, distill_stage, make_teacher, transfer_stage
from gaincell.atomic import atomic_file
from gaincell.chip.config import CellConfig, GainCellConfig, preset
from gaincell.errors import GainCellError
from gaincell.hf.convert import convert, model_config
from gaincell.hf.layer import gain_cell_layers
from gaincell.hf.pretrained import load, load_pretrained, load_pretrained_tokenizer, save
from gaincell.tomlfile import parse_override, read_toml
from gaincell.validation import check_int, check_positive

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass


# -- stages -----------------------------------------------------------------------------------------


def linear_config(hardware: GainCellConfig) -> GainCellConfig:
    """The linear intermediate model (§3.3) of a target chip: its periphery, window and leakage, linear cells."""
    return hardware.replace(attention="gaincell", cell=CellConfig(kind="linear"))


class _RecordTargets:
    """Turns target recording on for the linear stage's training steps (not for its evaluations)."""

    def __init__(self, model) -> None:
        self.cells = gain_cell_layers(model)

    def __enter__(self):
        for cell in self.cells:
            cell.recording = True
        return self

    def __exit__(self, *exc) -> None:
        for cell in self.cells:
            cell.recording = False


def linear_stage(
    model, train_data, eval_data, config: TrainConfig, hardware: GainCellConfig, output_dir, **kwargs
) -> TrainResult:
    """Stage 1: fine-tune on the linear model while recording the calibration targets."""
    convert(model, linear_config(hardware))
    with _RecordTargets(model):
        return train(model, train_data, eval_data, config, output_dir, **kwargs)


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
            check_int(f"calibration.{name}", getattr(self, name), 1)
        check_int("calibration.seed", self.seed, 0)
        for name in ("tolerance", "damping_start", "damping_end"):
            check_positive(f"calibration.{name}", getattr(self, name))
        if self.damping_start > 1 or self.damping_end > 1:
            raise GainCellError("calibration.damping_start and damping_end must be <= 1 (1 = the full correction)")

    def damping(self, iteration: int) -> float:
        """Linear decay from ``damping_start`` to ``damping_end`` over ``damping_iterations``, then flat."""
        progress = min(1.0, iteration / self.damping_iterations)
        return self.damping_start + (self.damping_end - self.damping_start) * progress


@dataclass
class CalibrationResult:
    """How calibration ended, on the process whose scalers were kept (``rank``).

    ``errors[i]`` is the largest |target − observed| gap in mean or std over all layers, heads and
    scalers measured at iteration i, ``dampings[i]`` the damping its update used (none after the
    last measurement); ``loss`` is that process's loss on its own batch after calibration, and
    ``losses`` every process's (NaN or inf never wins the choice).
    """

    iterations: int
    converged: bool
    errors: list[float]
    dampings: list[float]
    loss: float
    rank: int = 0
    losses: list[float] = field(default_factory=list)


def _errors(cell) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = cell.observed
    return cell.target_mean - means.to(cell.target_mean), cell.target_std - stds.to(cell.target_std)


def _update_scalers(cells, gaps, damping: float) -> None:
    """a ← a·(1 + d·(target_std/std − 1)), b ← b + d·(target_mean − mean), per layer, head and scaler.

    Where a scaler's output has no spread at all (std = 0: e.g. every sub-tile of a head reads out
    0, so its output is constant) no gain can reach the target std; there a stays and only b moves.
    """
    for cell, (mean_gap, _) in zip(cells, gaps, strict=True):
        _, stds = cell.observed
        stds = stds.to(cell.target_std)
        spread = (stds > 0) & torch.isfinite(stds)
        ratio = torch.where(spread, cell.target_std / stds.where(spread, torch.ones_like(stds)), torch.ones_like(stds))
        for index, name in enumerate(cell.scalers.names):
            a, b = getattr(cell.scalers, f"a_{name}"), getattr(cell.scalers, f"b_{name}")
            a.mul_(1 + damping * (ratio[index].to(a) - 1))
            b.add_(damping * mean_gap[index].to(b))


@torch.no_grad()
def calibrate(
    model,
    batch: torch.Tensor,
    config: CalibrationConfig = CalibrationConfig(),
    hardware: GainCellConfig | None = None,
    *,
    progress: bool = True,
) -> CalibrationResult:
    """Stage 2: match the scaler statistics of the nonlinear model to the linear stage's targets.

    ``batch`` is a (B, T) block of token ids (this process's). ``hardware`` switches the model to
    that config first (default: keep the model's). The statistics are measured in training mode
    (dropout on), the mode the targets were recorded in (SPEC §4.2), with the same dropout draw
    (``config.seed``) at every iteration, so the loop converges on one function instead of chasing
    dropout noise. The loss that picks the process to keep is measured in eval mode.
    """
    if hardware is not None:
        convert(model, hardware)
    cells = gain_cell_layers(model)
    if model_config(model).attention == "softmax":
        raise GainCellError("calibration needs a gain-cell config, not the softmax one")
    if any(int(cell.target_count) == 0 for cell in cells):
        raise GainCellError("calibration needs targets: run the linear stage (adapt.linear_stage) first")
    was_training = model.training
    device = next(model.parameters()).device
    batch = batch.to(device)
    for cell in cells:
        cell.observing = True
    errors: list[float] = []
    dampings: list[float] = []
    converged = False
    bar = tqdm(range(config.max_iterations), desc="calibration", leave=False, disable=not progress or _rank() != 0)
    try:
        model.train()
        for iteration in bar:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(config.seed)  # the same dropout draw every iteration: one function to calibrate
                model(input_ids=batch)
            gaps = [_errors(cell) for cell in cells]
            worst = max(max(mean.abs().max().item(), std.abs().max().item()) for mean, std in gaps)
            errors.append(worst)
            if worst < config.tolerance:
                converged = True
                break
            damping = config.damping(iteration)
            dampings.append(damping)
            bar.set_postfix(error=f"{worst:.2e}", damping=f"{damping:.3f}")
            _update_scalers(cells, gaps, damping)
        model.eval()
        loss = float(model(input_ids=batch, labels=batch).loss)
    finally:
        bar.close()
        for cell in cells:
            cell.observing = False
            cell.observed = None
        model.train(was_training)
    result = CalibrationResult(len(errors), converged, errors, dampings, loss, 0, [loss])
    return _keep_best_rank(model, result)


def _keep_best_rank(model, result: CalibrationResult) -> CalibrationResult:
    """With several processes, broadcast the scalers (and the result) of the one whose calibrated loss
    is lowest. A NaN or infinite loss never wins; if every loss is, process 0 is kept."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return result
    world = torch.distributed.get_world_size()
    device = next(model.parameters()).device
    if torch.distributed.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    losses = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(world)]
    torch.distributed.all_gather(losses, torch.tensor([result.loss], dtype=torch.float64, device=device))
    losses = torch.cat(losses).cpu()
    finite = torch.isfinite(losses)
    best = int(torch.where(finite, losses, torch.inf).argmin()) if bool(finite.any()) else 0
    for cell in gain_cell_layers(model):
        for parameter in cell.scalers.parameters():
            data = parameter.data.to(device)
            torch.distributed.broadcast(data, src=best)
            parameter.data.copy_(data)
    chosen = [result]
    torch.distributed.broadcast_object_list(chosen, src=best, device=device)
    return dataclasses.replace(chosen[0], rank=best, losses=losses.tolist())


def nonlinear_stage(
    model, train_data, eval_data, config: TrainConfig, hardware: GainCellConfig, output_dir, **kwargs
) -> TrainResult:
    """Stage 3: quantisation-aware fine-tuning of the calibrated model on the target chip's config."""
    convert(model, hardware)
    return train(model, train_data, eval_data, config, output_dir, **kwargs)


# -- the recipe file ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSection:
    """Where the recipe's tokens come from: a local text file/folder or a hub dataset."""

    text: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    text_column: str = "text"
    eval_text: str | None = None
    eval_split: str | None = None
    block_size: int = 1024
    eval_fraction: float = 0.05
    eval_blocks: int | None = None


#: Every stage a recipe can run, in the only order they can run in (SPEC §4, §4.4).
STAGES = ("initialised", "transfer", "linear", "calibrated", "nonlinear", "distill")
PAPER_STAGES = ("linear", "calibrated", "nonlinear")


@dataclass(frozen=True)
class Recipe:
    """One adaptation run: model, data, target chip and the stages to run (SPEC §4, §4.4).

    ``model`` is a hub id, a local folder or a ``.gguf`` file (or a folder/hub repo plus
    ``gguf_file``). ``stages`` picks, in order, from :data:`STAGES`: the paper's three by default;
    ``initialised`` (data-driven scalers), ``transfer`` (attention transfer) and ``distill``
    (end-to-end fine-tuning against the original model's logits) are ours. ``hardware`` is a preset
    name plus top-level overrides (``{"preset": "paper", "window": 1024}``) or a full gain-cell
    config dict. Training stage tables take :class:`~gaincell.adaptation.train.TrainConfig` fields.
    """

    model: str = "gpt2"
    gguf_file: str | None = None
    stages: tuple[str, ...] = PAPER_STAGES
    output_dir: str = "adapt-run"
    data: DataSection = field(default_factory=DataSection)
    hardware: dict = field(default_factory=lambda: {"preset": "paper"})
    linear: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=3000, batch_size=16, grad_accum=120))
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    nonlinear: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=13000, batch_size=60, grad_accum=32))
    initialise: InitialiseConfig = field(default_factory=InitialiseConfig)
    transfer: TransferConfig = field(
        default_factory=lambda: TransferConfig(max_steps=200, batch_size=8, lr=1e-3, warmup_steps=10, weight_decay=0.0)
    )
    distill: DistillConfig = field(
        default_factory=lambda: DistillConfig(max_steps=1000, batch_size=8, lr=3e-4, warmup_steps=20)
    )

    def hardware_config(self) -> GainCellConfig:
        return hardware_from_dict(self.hardware)


def hardware_from_dict(data: dict) -> GainCellConfig:
    """``{"preset": name, **top-level overrides}`` or a full :meth:`GainCellConfig.to_dict` dict."""
    if not isinstance(data, dict):
        raise GainCellError(f"hardware must be a table, got {type(data).__name__}")
    data = dict(data)
    try:
        if "preset" in data:
            name = data.pop("preset")
            base = preset(name).to_dict()
            for key, value in data.items():
                if isinstance(value, dict) and isinstance(base.get(key), dict):
                    base[key] = {**base[key], **value}
                else:
                    base[key] = value
            data = base
        return GainCellConfig.from_dict(data)
    except (GainCellError, TypeError) as error:
        raise GainCellError(f"hardware: {error}") from error


def _section(cls, data: Any, name: str, defaults: Any = None):
    if data is None:
        return defaults if defaults is not None else cls()
    if not isinstance(data, dict):
        raise GainCellError(f"[{name}] must be a table, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise GainCellError(f"[{name}] has unknown key(s) {unknown}; known: {sorted(known)}")
    base = dataclasses.asdict(defaults) if defaults is not None else {}
    try:
        return cls(**{**base, **data})
    except GainCellError as error:
        raise GainCellError(f"[{name}] {error}") from error
    except TypeError as error:
        raise GainCellError(f"[{name}] {error}") from error


def recipe_from_dict(data: dict) -> Recipe:
    """Build and validate a :class:`Recipe`; unknown keys anywhere are errors that name them."""
    if not isinstance(data, dict):
        raise GainCellError("recipe must be a table")
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise GainCellError(f"recipe has unknown key(s) {unknown}; known: {sorted(known)}")
    defaults = Recipe()
    recipe = Recipe(
        model=data.get("model", defaults.model),
        gguf_file=data.get("gguf_file"),
        stages=_stages(data.get("stages", defaults.stages)),
        output_dir=data.get("output_dir", defaults.output_dir),
        data=_section(DataSection, data.get("data"), "data"),
        hardware=data.get("hardware", defaults.hardware),
        linear=_section(TrainConfig, data.get("linear"), "linear", defaults.linear),
        calibration=_section(CalibrationConfig, data.get("calibration"), "calibration"),
        nonlinear=_section(TrainConfig, data.get("nonlinear"), "nonlinear", defaults.nonlinear),
        initialise=_section(InitialiseConfig, data.get("initialise"), "initialise"),
        transfer=_section(TransferConfig, data.get("transfer"), "transfer", defaults.transfer),
        distill=_section(DistillConfig, data.get("distill"), "distill", defaults.distill),
    )
    for name in ("model", "output_dir"):
        if not isinstance(getattr(recipe, name), str) or not getattr(recipe, name):
            raise GainCellError(f"{name} must be a non-empty string, got {getattr(recipe, name)!r}")
    if (recipe.data.text is None) == (recipe.data.dataset is None):
        raise GainCellError("[data] needs exactly one of text = PATH or dataset = NAME")
    recipe.hardware_config()  # validate now, not after the linear stage
    if recipe.gguf_file is not None and (not isinstance(recipe.gguf_file, str) or not recipe.gguf_file):
        raise GainCellError(f"gguf_file must be a file name, got {recipe.gguf_file!r}")
    trained = [name for name in ("transfer", "linear", "nonlinear", "distill") if name in recipe.stages]
    if len({getattr(recipe, name).mixed_precision for name in trained}) > 1:
        raise GainCellError(f"mixed_precision must be the same in {trained} (one accelerate state per run)")
    return recipe


def _stages(value: Any) -> tuple[str, ...]:
    """``stages``: a non-empty list of :data:`STAGES` names, each once, in that order; calibration needs targets."""
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(name, str) for name in value):
        raise GainCellError(f"stages must be a non-empty list of stage names from {list(STAGES)}, got {value!r}")
    unknown = [name for name in value if name not in STAGES]
    if unknown:
        raise GainCellError(f"stages: unknown stage(s) {unknown}; known: {list(STAGES)}")
    if list(value) != sorted(set(value), key=STAGES.index):
        raise GainCellError(f"stages must name each stage once, in the order {list(STAGES)}; got {list(value)}")
    if "calibrated" in value and "linear" not in value:
        raise GainCellError("stages: 'calibrated' needs the 'linear' stage before it (it records the targets)")
    return tuple(value)


def read_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a TOML recipe; ``overrides`` are ``section.key=value`` strings (values parsed as TOML)."""
    data = read_toml(path)
    for override in overrides:
        key, value = parse_override(override, "section.key=value")
        table = data
        *parents, leaf = key.split(".")
        for parent in parents:
            table = table.setdefault(parent, {})
            if not isinstance(table, dict):
                raise GainCellError(f"--set {key}: {parent} is not a table")
        table[leaf] = value
    return recipe_from_dict(data)


# -- running a recipe -----------------------------------------------------------------------------


def _load_model(name: str, gguf_file: str | None = None):

    return load_pretrained(name, gguf_file)


def _load_tokenizer(name: str, gguf_file: str | None = None):

    return load_pretrained_tokenizer(name, gguf_file)


def recipe_blocks(recipe: Recipe, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and evaluation blocks of the recipe's corpus, tokenised with the model's tokenizer."""

    data = recipe.data
    corpus = load_text_corpus(
        data.text, data.dataset, split=data.split, config=data.dataset_config, text_column=data.text_column
    )
    blocks = corpus_blocks(corpus, tokenizer, data.block_size)
    if data.eval_text is not None or data.eval_split is not None:
        eval_corpus = load_text_corpus(
            data.eval_text, None if data.eval_text else data.dataset,
            split=data.eval_split or "validation", config=data.dataset_config, text_column=data.text_column,
        )  # fmt: skip
        train_blocks, eval_blocks = blocks, corpus_blocks(eval_corpus, tokenizer, data.block_size)
    else:
        train_blocks, eval_blocks = split_blocks(blocks, data.eval_fraction)
    if data.eval_blocks is not None:
        eval_blocks = eval_blocks[: data.eval_blocks]
    return train_blocks, eval_blocks


def adapt(recipe: Recipe, *, resume: bool = False) -> dict:
    """Run the recipe's stages; each saves its model under ``output_dir/<stage>/model``. Returns a summary.

    With ``resume`` a stage whose model is already saved is skipped and an interrupted training
    stage continues from its last checkpoint.
    """

    hardware = recipe.hardware_config()
    output = Path(recipe.output_dir)
    if output.exists() and not output.is_dir():
        raise GainCellError(f"output_dir: {output} exists and is not a directory")
    if output.exists() and any(output.iterdir()) and not resume:
        raise GainCellError(f"output_dir: {output} is not empty; use --resume to continue or choose another directory")
    tokenizer = _load_tokenizer(recipe.model, recipe.gguf_file)
    model = _load_model(recipe.model, recipe.gguf_file)
    train_blocks, eval_blocks = recipe_blocks(recipe, tokenizer)
    _check_batches(recipe, train_blocks)
    summary: dict[str, Any] = {"model": recipe.model, "stages": list(recipe.stages), "hardware": hardware.to_dict()}
    runner = _StageRunner(recipe, hardware, output, train_blocks, eval_blocks, resume)
    for name in recipe.stages:
        saved, stage_summary = output / name / "model", output / name / "summary.json"
        if resume and saved.is_dir() and stage_summary.is_file():  # the summary is written last
            model = load(saved)
            summary[name] = json.loads(stage_summary.read_text())
            continue
        summary[name] = getattr(runner, f"run_{name}")(model)
        if _rank() == 0:  # one writer: every process holds the same model after a stage
            save(model, saved, tokenizer)
            with atomic_file(stage_summary) as handle:
                handle.write(json.dumps(summary[name], indent=1))
        _barrier()
    if _rank() == 0:
        with atomic_file(output / "summary.json") as handle:
            handle.write(json.dumps(summary, indent=1))
    _barrier()
    return summary


class _StageRunner:
    """One ``run_<stage>(model) -> summary dict`` per entry of :data:`STAGES`; loads the teacher on demand."""

    def __init__(self, recipe: Recipe, hardware: GainCellConfig, output: Path, train_blocks, eval_blocks, resume: bool):
        self.recipe, self.hardware, self.output, self.resume = recipe, hardware, output, resume
        self.train_blocks, self.eval_blocks = train_blocks, eval_blocks
        self._teachers: dict[str, Any] = {}

    def pretrained(self):
        """A fresh copy of the original model (never the one being adapted)."""
        return _load_model(self.recipe.model, self.recipe.gguf_file)

    def teacher(self, kind: str):

        if kind not in self._teachers:
            self._teachers[kind] = make_teacher(self.pretrained(), kind, self.hardware)
        return self._teachers[kind]

    def _train(self, name: str, stage_function, model, *teacher) -> dict:
        stage_dir, config = self.output / name, getattr(self.recipe, name)
        result = stage_function(
            model, *teacher, self.train_blocks, self.eval_blocks, config, self.hardware, stage_dir,
            resume=self.resume and _has_checkpoint(stage_dir),
        )  # fmt: skip
        world = int(os.environ.get("WORLD_SIZE", "1"))
        tokens = result.step * config.batch_size * config.grad_accum * world * int(self.train_blocks.shape[1])
        return {"steps": result.step, "tokens": tokens, "loss": result.loss, "eval_loss": result.eval_loss}

    def run_initialised(self, model) -> dict:

        result = initialise_scalers(model, self.pretrained(), self.train_blocks, self.recipe.initialise, self.hardware)
        _broadcast_scalers(model)  # each process drew the same rows; float sums may differ by device: rank 0 wins
        return result

    def run_transfer(self, model) -> dict:

        return self._train("transfer", transfer_stage, model, self.teacher(self.recipe.transfer.teacher))

    def run_linear(self, model) -> dict:
        return self._train("linear", linear_stage, model)

    def run_calibrated(self, model) -> dict:
        generator = torch.Generator().manual_seed(self.recipe.calibration.seed + _rank())
        rows = torch.randperm(len(self.train_blocks), generator=generator)[: self.recipe.calibration.batch_size]
        return dataclasses.asdict(calibrate(model, self.train_blocks[rows], self.recipe.calibration, self.hardware))

    def run_nonlinear(self, model) -> dict:
        return self._train("nonlinear", nonlinear_stage, model)

    def run_distill(self, model) -> dict:

        return self._train("distill", distill_stage, model, self.teacher(self.recipe.distill.teacher))


def _broadcast_scalers(model) -> None:
    """With several processes, give every process rank 0's scalers."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    device = next(model.parameters()).device
    if torch.distributed.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    for cell in gain_cell_layers(model):
        for parameter in cell.scalers.parameters():
            data = parameter.data.to(device)
            torch.distributed.broadcast(data, src=0)
            parameter.data.copy_(data)


def _check_batches(recipe: Recipe, train_blocks: torch.Tensor) -> None:
    """Each training stage needs one full batch per process: refuse now, not after the stages before it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun / accelerate launch
    for name in ("transfer", "linear", "nonlinear", "distill"):
        if name not in recipe.stages:
            continue
        needed = getattr(recipe, name).batch_size * world
        if len(train_blocks) < needed:
            raise GainCellError(
                f"{name}.batch_size: the corpus gives {len(train_blocks)} training blocks of {recipe.data.block_size} "
                f"tokens, fewer than one batch of {needed} ({world} process(es)); use more text or a smaller batch"
            )


def _has_checkpoint(stage_dir: Path) -> bool:

    return latest_checkpoint(stage_dir) is not None


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0
