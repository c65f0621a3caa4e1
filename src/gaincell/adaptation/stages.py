"""The adaptation recipe of SPEC §4: a pre-trained softmax model onto the nonlinear gain-cell model.

1. **Linear stage** — convert to the linear hardware model (§3.3: same periphery, window and
   leakage as the target chip, linear cells), fine-tune it (scalers trainable) and record, per
   layer, head and scaler, an EMA (α = 0.1) of the mean and std after each scaler: the *targets*.
2. **Calibration** — switch to the nonlinear model with the same weights and move each scaler so
   its output statistics meet the targets (:mod:`gaincell.adaptation.calibration`).
3. **Nonlinear stage** — fine-tune the calibrated nonlinear model, quantisation-aware (STE).

:func:`adapt` runs these and the stages of §4.4 from one :class:`~gaincell.adaptation.recipe.Recipe`,
read from a TOML file by ``gaincell adapt``; the stage functions are public so notebooks and the
demo can run them one by one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from gaincell.adaptation.calibration import calibrate
from gaincell.adaptation.data import check_context, corpus_blocks, load_text_corpus, split_blocks
from gaincell.adaptation.distributed import barrier, broadcast_scalers, rank
from gaincell.adaptation.initialise import initialise_scalers
from gaincell.adaptation.recipe import Recipe
from gaincell.adaptation.settings import TrainConfig
from gaincell.adaptation.state import check_files, data_digest, digest_pairs, file_digests, latest_checkpoint
from gaincell.adaptation.train import TrainResult, train
from gaincell.adaptation.transfer import distill_stage, make_teacher, transfer_stage
from gaincell.atomic import atomic_file
from gaincell.chip.config import CellConfig, GainCellConfig
from gaincell.errors import GainCellError
from gaincell.hf.card import model_card
from gaincell.hf.convert import convert
from gaincell.hf.layer import gain_cell_layers
from gaincell.hf.pretrained import load, load_pretrained, load_pretrained_tokenizer, save
from gaincell.lock import LOCK_FILE, folder_lock
from gaincell.validation import as_json, first_difference


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


def nonlinear_stage(
    model, train_data, eval_data, config: TrainConfig, hardware: GainCellConfig, output_dir, **kwargs
) -> TrainResult:
    """Stage 3: quantisation-aware fine-tuning of the calibrated model on the target chip's config."""
    convert(model, hardware)
    return train(model, train_data, eval_data, config, output_dir, **kwargs)


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


def adapt(
    recipe: Recipe, *, resume: bool = False, device: str | torch.device | None = None, callbacks: Sequence = ()
) -> dict:
    """Run the recipe's stages; each saves its model under ``output_dir/<stage>/model``. Returns a summary.

    With ``resume`` a stage whose model is already saved is skipped and an interrupted training
    stage continues from its last checkpoint. ``device`` (e.g. ``"cuda"``) is where the model and the
    original's copies (initialisation, teachers) are loaded, so the work outside the training loop runs
    there too; None loads them on the CPU, and the training loop moves the model where accelerate runs.
    ``callbacks`` go to every training stage (:func:`gaincell.adaptation.train.train`'s hooks).
    """
    hardware = recipe.hardware_config()
    output = Path(recipe.output_dir)
    _check_output(recipe, output, resume)
    tokenizer = load_pretrained_tokenizer(recipe.model, recipe.gguf_file)
    model = load_pretrained(recipe.model, recipe.gguf_file)
    if device is not None:
        model.to(device)
    check_context(model, recipe.data.block_size, "data.block_size")
    train_blocks, eval_blocks = recipe_blocks(recipe, tokenizer)
    _check_batches(recipe, train_blocks)
    with ExitStack() as claimed:
        if rank() == 0:  # everything checked: the folder becomes this run's, and no other process's while it runs
            claimed.enter_context(folder_lock(output, "output_dir", "gaincell adapt"))
            _check_output(recipe, output, resume)  # again, now that no other run can write it
            data = data_digest(train_blocks)
            if not (output / RUN_FILE).is_file():
                with atomic_file(output / RUN_FILE) as handle:
                    run = {"written_by": "gaincell adapt", "recipe": run_settings(recipe), "train_data_sha256": data}
                    json.dump(run, handle, indent=1)
            else:
                _check_data(output, data)
        barrier()
        return _run_stages(recipe, hardware, output, model, tokenizer, train_blocks, eval_blocks, resume, device, callbacks)


def _run_stages(recipe: Recipe, hardware: GainCellConfig, output: Path, model, tokenizer, train_blocks, eval_blocks,
                resume: bool, device=None, callbacks: Sequence = ()) -> dict:  # fmt: skip
    """Each stage in turn (or, resumed, its saved model once checked), saved under ``output/<stage>/model``."""
    summary: dict[str, Any] = {"model": recipe.model, "stages": list(recipe.stages), "hardware": hardware.to_dict()}
    runner = _StageRunner(recipe, hardware, output, train_blocks, eval_blocks, resume, device, callbacks)
    for name in recipe.stages:
        saved, stage_summary = output / name / "model", output / name / "summary.json"
        if resume and saved.is_dir() and stage_summary.is_file():  # the summary is written last
            summary[name] = _resumed_stage(output, name)
            model = load(saved, device=device)
            continue
        summary[name] = getattr(runner, f"run_{name}")(model)
        if rank() == 0:  # one writer: every process holds the same model after a stage
            save(model, saved, tokenizer, card=_card(recipe, summary, hardware))
            with atomic_file(stage_summary) as handle:  # with the model's checksums, checked on resume
                handle.write(json.dumps({**summary[name], MODEL_FILES: file_digests(saved)}, indent=1))
        barrier()
    if rank() == 0:
        with atomic_file(output / "summary.json") as handle:
            handle.write(json.dumps(summary, indent=1))
    barrier()
    return summary


#: The key of a stage's ``summary.json`` that holds the size and sha256 of each file of its saved model.
MODEL_FILES = "model_files"


def _resumed_stage(output: Path, name: str) -> dict:
    """The summary of a stage saved before, once its model is checked whole against the checksums saved with
    it: resuming from an altered model would build every later stage on it. (Runs from before the checksums
    were kept have none to check.)"""
    what = f"cannot resume {output}: the {name} stage's saved model {output / name / 'model'}"
    try:
        stored = json.loads((output / name / "summary.json").read_text())
        files = stored.pop(MODEL_FILES, None)
        files = None if files is None else digest_pairs(files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise GainCellError(f"{what}: unreadable {name}/summary.json ({type(error).__name__})") from error
    if files is not None:
        check_files(output / name / "model", files, what)
    return stored


#: The file that makes a folder an adaptation run: the settings it was started with. ``--resume`` needs it.
RUN_FILE = "run.json"


def run_settings(recipe: Recipe) -> dict:
    """What a run must keep to be resumed: the recipe with the chip resolved, less where it is written and
    whether bars are shown."""
    settings = dataclasses.asdict(recipe)
    settings.pop("output_dir")
    settings["hardware"] = recipe.hardware_config().to_dict()
    for table in settings.values():
        if isinstance(table, dict):
            table.pop("progress_bar", None)
    return as_json(settings)


def _check_output(recipe: Recipe, output: Path, resume: bool) -> None:
    """A new run needs an empty or absent folder; ``resume`` a folder this command started with the same recipe."""
    if output.exists() and not output.is_dir():
        raise GainCellError(f"output_dir: {output} exists and is not a directory")
    if not output.exists() or not any(path.name != LOCK_FILE for path in output.iterdir()):
        return
    if not resume:
        raise GainCellError(f"output_dir: {output} is not empty; use --resume to continue or choose another directory")
    try:
        saved = json.loads((output / RUN_FILE).read_text())["recipe"]
    except (OSError, ValueError, KeyError, TypeError):
        raise GainCellError(
            f"output_dir: {output} holds no gaincell adapt run (no readable {RUN_FILE}); --resume continues only "
            "a run gaincell adapt started there: choose another directory"
        ) from None
    changed = first_difference(saved, run_settings(recipe))
    if changed is not None:
        name, before, after = changed
        raise GainCellError(
            f"cannot resume {output}: {name} was {before!r}, now {after!r}; resume with the recipe it started with"
        )


def _check_data(output: Path, data: str) -> None:
    """A resumed run trains on the tokens it started with: the same text file, edited, would mix two datasets
    across stages (a run from before the digest was recorded is not checked)."""
    saved = json.loads((output / RUN_FILE).read_text()).get("train_data_sha256")
    if saved is not None and saved != data:
        raise GainCellError(
            f"cannot resume {output}: the training data changed (sha256 of its token blocks was {saved[:12]}…, now "
            f"{data[:12]}…); resume with the text the run started with"
        )


#: What each training stage's held-out ``eval_loss`` measures (the stage's own objective in evaluation mode,
#: :mod:`gaincell.adaptation.transfer`): a language-model cross-entropy, or attention transfer's layer error.
LM_LOSS_STAGES = {
    "linear": "the model with linear cells (SPEC §3.3)",
    "nonlinear": "the model",
    "distill": "the model",
}


def held_out_results(stages: dict[str, dict]) -> dict[str, float]:
    """The card's measured results, each labelled with what it measured: perplexity (exp of the held-out LM
    loss) where the stage's eval loss is one, attention transfer's relative MSE as that, never its exp."""
    results: dict[str, float] = {}
    for name, stage in stages.items():
        loss = stage.get("eval_loss")
        if not isinstance(loss, float) or not math.isfinite(loss):
            continue
        if name == "transfer":
            results["held-out attention error after transfer (relative MSE per layer, mean over layers)"] = round(loss, 4)
        elif name in LM_LOSS_STAGES:
            label = f"held-out {{}} of {LM_LOSS_STAGES[name]} after {name}"
            results[label.format("loss (nats/token)")] = round(loss, 4)
            if loss < 700:  # exp overflows a float near 709.8: the loss is the measurement, its exp a convenience
                results[label.format("perplexity")] = round(math.exp(loss), 3)
    return results


def _card(recipe: Recipe, summary: dict, hardware: GainCellConfig):
    """The saved model's card: the chip, the recipe, the stages run so far with their tokens, and what each
    training stage measured on held-out text (:func:`held_out_results`)."""
    stages = {
        name: summary[name] for name in recipe.stages if isinstance(summary.get(name), dict) and "tokens" in summary[name]
    }
    recipe_tables = dataclasses.asdict(recipe)
    results = held_out_results(stages)
    return model_card(hardware.to_dict(), base_model=recipe.model, recipe=recipe_tables, stages=stages, results=results)


class _StageRunner:
    """One ``run_<stage>(model) -> summary dict`` per entry of :data:`~gaincell.adaptation.recipe.STAGES`."""

    def __init__(self, recipe: Recipe, hardware: GainCellConfig, output: Path, train_blocks, eval_blocks, resume: bool,
                 device=None, callbacks: Sequence = ()):  # fmt: skip
        self.recipe, self.hardware, self.output, self.resume = recipe, hardware, output, resume
        self.train_blocks, self.eval_blocks, self.device = train_blocks, eval_blocks, device
        self.callbacks = tuple(callbacks)
        self._teachers: dict[str, Any] = {}

    def pretrained(self):
        """A fresh copy of the original model (never the one being adapted)."""
        model = load_pretrained(self.recipe.model, self.recipe.gguf_file)
        return model if self.device is None else model.to(self.device)

    def teacher(self, kind: str):
        """The softmax teacher of this kind (``window`` or ``full``), loaded once per run."""
        if kind not in self._teachers:
            self._teachers[kind] = make_teacher(self.pretrained(), kind, self.hardware)
        return self._teachers[kind]

    def _train(self, name: str, stage_function, model, *teacher) -> dict:
        stage_dir, config = self.output / name, getattr(self.recipe, name)
        result = stage_function(
            model, *teacher, self.train_blocks, self.eval_blocks, config, self.hardware, stage_dir,
            resume=self.resume and latest_checkpoint(stage_dir) is not None, callbacks=self.callbacks,
        )  # fmt: skip
        world = int(os.environ.get("WORLD_SIZE", "1"))
        tokens = result.step * config.batch_size * config.grad_accum * world * int(self.train_blocks.shape[1])
        return {"steps": result.step, "tokens": tokens, "loss": result.loss, "eval_loss": result.eval_loss}

    def run_initialised(self, model) -> dict:
        result = initialise_scalers(model, self.pretrained(), self.train_blocks, self.recipe.initialise, self.hardware)
        broadcast_scalers(model)  # each process drew the same rows; float sums may differ by device: rank 0 wins
        return result

    def run_transfer(self, model) -> dict:
        return self._train("transfer", transfer_stage, model, self.teacher(self.recipe.transfer.teacher))

    def run_linear(self, model) -> dict:
        return self._train("linear", linear_stage, model)

    def run_calibrated(self, model) -> dict:
        generator = torch.Generator().manual_seed(self.recipe.calibration.seed + rank())
        rows = torch.randperm(len(self.train_blocks), generator=generator)[: self.recipe.calibration.batch_size]
        return dataclasses.asdict(calibrate(model, self.train_blocks[rows], self.recipe.calibration, self.hardware))

    def run_nonlinear(self, model) -> dict:
        return self._train("nonlinear", nonlinear_stage, model)

    def run_distill(self, model) -> dict:
        return self._train("distill", distill_stage, model, self.teacher(self.recipe.distill.teacher))


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
