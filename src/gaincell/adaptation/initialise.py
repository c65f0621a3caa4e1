"""Data-driven scaler initialisation (SPEC §4.4, ours): scalers from the pre-trained model's own statistics.

The paper starts every head at a = 1, b_k = b_v = 0.45 (§3.2), which for a real LLM leaves most of
q, k, v clipped by the DAC ranges (SmolLM2's perplexity goes from 22 to 1.6 million). Here each
head's q, k and v scaler is set from the mean μ and std σ of that head's pre-trained q, k, v
(RoPE applied, as they reach the arrays) on training text, so that a·x + b has its mean at the
middle of the range and ±``sigmas``·σ span the range:

    a = (high − low) / (2 · sigmas · σ),   b = (low + high)/2 − a · μ

(the authors' code carries this as a commented-out variant with sigmas = 2). With ``output`` on,
each head's output scaler then maps the gain-cell read-out onto the mean and std of the original
softmax attention output of that head, measured on the same layer inputs.
"""

from __future__ import annotations

import torch

from gaincell.adaptation.settings import InitialiseConfig
from gaincell.chip.config import GainCellConfig
from gaincell.errors import GainCellError
from gaincell.hf.convert import attention_modules, convert, model_config
from gaincell.hf.layer import gain_cell_layers
from gaincell.hf.taps import capture_attention_io, replay, tap_attention


class Moments:
    """Per-head running sums (float64) for an exact pooled mean and std over many batches."""

    def __init__(self, n_heads: int) -> None:
        self.sums = torch.zeros(3, n_heads, dtype=torch.float64)

    def add(self, x: torch.Tensor, head_dim: int) -> None:
        """``x`` with heads on dimension ``head_dim``; every other dimension is pooled."""
        x = x.detach().double().movedim(head_dim, 0).reshape(x.shape[head_dim], -1).cpu()
        self.sums += torch.stack(
            [torch.full((x.shape[0],), float(x.shape[1]), dtype=torch.float64), x.sum(1), x.square().sum(1)]
        )

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        count, total, squares = self.sums
        mean = total / count
        return mean, (squares / count - mean.square()).clamp_min(0).sqrt()


def sample_batches(blocks: torch.Tensor, config: InitialiseConfig) -> list[torch.Tensor]:
    """``config.batches`` batches of ``config.batch_size`` training blocks, drawn from ``config.seed``."""
    generator = torch.Generator().manual_seed(config.seed)
    rows = torch.randperm(len(blocks), generator=generator)[: config.batch_size * config.batches]
    return [blocks[chunk].long() for chunk in rows.split(config.batch_size)]


@torch.no_grad()
def pretrained_statistics(teacher, batches: list[torch.Tensor]) -> list[dict[str, Moments]]:
    """Per layer, per query head: moments of q, k, v (RoPE applied) and of the softmax output."""
    stats: dict[int, dict[str, Moments]] = {}

    def record(module, query, key, value, output) -> None:
        heads = query.shape[1]
        groups = heads // key.shape[1]
        layer = stats.setdefault(module.layer_idx, {name: Moments(heads) for name in "qkvo"})
        layer["q"].add(query, 1)
        layer["k"].add(key.repeat_interleave(groups, dim=1), 1)
        layer["v"].add(value.repeat_interleave(groups, dim=1), 1)
        layer["o"].add(output, 2)

    device = next(teacher.parameters()).device
    with tap_attention(teacher, record):
        for batch in batches:
            teacher(input_ids=batch.to(device), use_cache=False)
    return [stats[index] for index in sorted(stats)]


def _fill_ranges(cell, layer_stats: dict[str, Moments], hardware: GainCellConfig, sigmas: float) -> None:
    periphery = hardware.periphery
    for name, quantiser in (("q", periphery.q), ("k", periphery.kv), ("v", periphery.kv)):
        mean, std = layer_stats[name].mean_std()
        a = (quantiser.high - quantiser.low) / (2 * sigmas * std.clamp_min(1e-8))
        b = (quantiser.low + quantiser.high) / 2 - a * mean
        getattr(cell.scalers, f"a_{name}").data.copy_(a)
        getattr(cell.scalers, f"b_{name}").data.copy_(b)
    cell.scalers.a_o.data.fill_(1.0)
    cell.scalers.b_o.data.fill_(0.0)


@torch.no_grad()
def initialise_scalers(
    student,
    teacher,
    blocks: torch.Tensor,
    config: InitialiseConfig = InitialiseConfig(),
    hardware: GainCellConfig | None = None,
) -> dict:
    """Set every head's scalers of ``student`` from ``teacher``'s statistics on ``blocks`` (SPEC §4.4).

    ``student`` is converted to ``hardware`` first (default: its own config); ``teacher`` is the
    pre-trained softmax model with the same weights. Returns the per-layer statistics used.
    """
    if hardware is not None:
        convert(student, hardware)
    hardware = model_config(student)
    if hardware.attention == "softmax":
        raise GainCellError("initialise: the student needs a gain-cell config, not the softmax one")
    cells = gain_cell_layers(student)
    batches = sample_batches(blocks, config)
    stats = pretrained_statistics(teacher, batches)
    if len(stats) != len(cells):
        raise GainCellError(f"initialise: teacher has {len(stats)} attention layers, student {len(cells)}")
    for cell, layer_stats in zip(cells, stats, strict=True):
        _fill_ranges(cell, layer_stats, hardware, config.sigmas)
    if config.output:
        _match_outputs(student, teacher, batches, cells, stats)
    return {
        "layers": [{name: [round(float(x), 5) for x in layer[name].mean_std()[1]] for name in "qkvo"} for layer in stats],
        "batches": len(batches),
        "statistics_tokens": sum(batch.numel() for batch in batches),  # forward only, like calibration
    }


@torch.no_grad()
def remap_scalers(model, trained: GainCellConfig, hardware: GainCellConfig) -> None:
    """Re-express an adapted model's trained q, k, v scalers for another chip's DAC ranges.

    An adapted model's scalers were trained with its weights (attention transfer, distillation);
    statistics of the original model would undo that (SPEC §4.4's initialisation assumes the
    original weights). Each trained map a·x + b onto [low₀, high₀] becomes the map onto [low₁, high₁]
    that puts every value at the same relative place: a' = a·s, b' = low₁ + (b − low₀)·s with
    s = (high₁ − low₁)/(high₀ − low₀). Equal ranges leave the scalers exactly as trained; the
    output scalers are kept (the ADC, window and leakage change the read-out, not the DAC ranges).
    """
    before, after = trained.periphery, hardware.periphery
    for cell in gain_cell_layers(model):
        for name, old, new in (("q", before.q, after.q), ("k", before.kv, after.kv), ("v", before.kv, after.kv)):
            if (old.low, old.high) == (new.low, new.high):
                continue
            scale = (new.high - new.low) / (old.high - old.low)
            a, b = getattr(cell.scalers, f"a_{name}"), getattr(cell.scalers, f"b_{name}")
            a.mul_(scale)
            b.sub_(old.low).mul_(scale).add_(new.low)


def _match_outputs(student, teacher, batches, cells, stats) -> None:
    """Output scalers: the gain-cell read-out of each head, replayed on the teacher's layer inputs,
    mapped affinely onto the mean and std of that head's softmax output."""

    read_outs = [Moments(cell.n_heads) for cell in cells]
    modules = attention_modules(student)
    device = next(teacher.parameters()).device
    was_training = student.training
    student.eval()
    for cell in cells:
        cell.observing = True
    try:
        for batch in batches:
            with capture_attention_io(teacher) as calls:
                teacher(input_ids=batch.to(device), use_cache=False)
            for module, cell, call, moments in zip(modules, cells, calls, read_outs, strict=True):
                replay(module, call)
                mean, std = cell.observed[0][3].double().cpu(), cell.observed[1][3].double().cpu()
                count = float(batch.numel() * cell.head_dim)  # equal per head and batch: pooled exactly
                moments.sums += torch.stack(
                    [torch.full_like(mean, count), mean * count, (std.square() + mean.square()) * count]
                )
    finally:
        for cell in cells:
            cell.observing = False
            cell.observed = None
        student.train(was_training)
    for cell, layer_stats, moments in zip(cells, stats, read_outs, strict=True):
        target_mean, target_std = layer_stats["o"].mean_std()
        mean, std = moments.mean_std()
        a = target_std / std.clamp_min(1e-8)
        cell.scalers.a_o.data.copy_(a)
        cell.scalers.b_o.data.copy_(target_mean - a * mean)
