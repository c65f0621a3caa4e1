"""Calibration (SPEC §4.2): the nonlinear model's scalers moved, without gradients, onto the linear stage's targets.

With the same weights as the linear stage, each scaler is moved so its output statistics meet the
targets recorded there: a ← a·(1 + d·(target_std/std − 1)), b ← b + d·(target_mean − mean), with a
damping d decaying linearly from 1.0 to 0.1 over 50 iterations; stop when every |error| < 1e-4 or
after 100 iterations. With several processes each calibrates on its own batch and the scalers of
the process with the lowest loss are broadcast to all.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from gaincell.adaptation.distributed import broadcast_scalers, collective_device, is_distributed, rank
from gaincell.adaptation.settings import CalibrationConfig
from gaincell.chip.config import GainCellConfig
from gaincell.errors import GainCellError
from gaincell.hf.convert import convert, model_config
from gaincell.hf.layer import gain_cell_layers


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
        raise GainCellError(
            "calibration needs targets: run the linear stage (gaincell.adaptation.stages.linear_stage) first"
        )
    was_training = model.training
    device = next(model.parameters()).device
    batch = batch.to(device)
    for cell in cells:
        cell.observing = True
    bar = tqdm(range(config.max_iterations), desc="calibration", leave=False, disable=not progress or rank() != 0)
    try:
        model.train()
        errors, dampings, converged = _iterate(model, batch, cells, config, bar)
        model.eval()
        loss = float(model(input_ids=batch, labels=batch).loss)
    finally:
        bar.close()
        for cell in cells:
            cell.observing = False
            cell.observed = None
        model.train(was_training)
    result = _keep_best_rank(model, CalibrationResult(len(errors), converged, errors, dampings, loss, 0, [loss]))
    if not math.isfinite(result.loss) or not math.isfinite(result.errors[-1]):
        raise GainCellError(
            f"calibrated: the statistics or the loss are not finite at iteration {result.iterations} "
            f"(largest error {result.errors[-1]}, loss {result.loss}): calibration stopped, nothing saved"
        )
    return result


def _iterate(model, batch, cells, config: CalibrationConfig, bar) -> tuple[list[float], list[float], bool]:
    """The loop of SPEC §4.2: forward, compare with the targets, update; (errors, dampings, converged)."""
    errors: list[float] = []
    dampings: list[float] = []
    devices = [batch.device] if batch.device.type == "cuda" else []
    for iteration in bar:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.seed)  # the same dropout draw every iteration: one function to calibrate
            model(input_ids=batch)
        gaps = [_errors(cell) for cell in cells]
        worst = max(max(mean.abs().max().item(), std.abs().max().item()) for mean, std in gaps)
        errors.append(worst)
        if not math.isfinite(worst):
            break  # this process's statistics are gone; its loss is then not finite and never chosen
        if worst < config.tolerance:
            return errors, dampings, True
        damping = config.damping(iteration)
        dampings.append(damping)
        bar.set_postfix(error=f"{worst:.2e}", damping=f"{damping:.3f}")
        _update_scalers(cells, gaps, damping)
    return errors, dampings, False


def _keep_best_rank(model, result: CalibrationResult) -> CalibrationResult:
    """With several processes, broadcast the scalers (and the result) of the one whose calibrated loss
    is lowest. A NaN or infinite loss never wins; if every loss is, process 0 is kept."""
    if not is_distributed():
        return result
    world = torch.distributed.get_world_size()
    device = collective_device(model)
    losses = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(world)]
    torch.distributed.all_gather(losses, torch.tensor([result.loss], dtype=torch.float64, device=device))
    losses = torch.cat(losses).cpu()
    finite = torch.isfinite(losses)
    best = int(torch.where(finite, losses, torch.inf).argmin()) if bool(finite.any()) else 0
    broadcast_scalers(model, src=best)
    chosen = [result]
    torch.distributed.broadcast_object_list(chosen, src=best, device=device)
    return dataclasses.replace(chosen[0], rank=best, losses=losses.tolist())
