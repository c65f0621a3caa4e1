"""Gain cells against GPUs: ratios, the whole-model (Amdahl) view and the retention check.

SPEC-hardware §6.2–§6.3.4. The GPU decodes a batch of B sequences per step; the chip's arrays hold one
sequence's window and produce one token per sequence. Which work to put side by side is a choice, so
both are always reported:

- ``per_batch_step``: one GPU step (B sequences, one token each) against one chip token — the latency a
  user waits for their next token on each; in energy it sets B tokens against one.
- ``per_sequence_token``: the GPU step divided by B (throughput-amortised) against one chip token —
  equal work. The paper's ratios (344x, 7,520x; 9.7e4, 4.4e4) are in this normalisation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from gaincell.errors import GainCellError
from gaincell.hardware.constants import GpuDevice, Technology
from gaincell.hardware.gaincell_model import AttentionShape, GainCellEstimate, estimate
from gaincell.hardware.gpu import DTYPE_BYTES, DecodeWorkload, board_energy, roofline, roofline_time
from gaincell.hardware.models import DecoderShape

NORMALISATIONS: tuple[str, ...] = ("per_batch_step", "per_sequence_token")


def ratios(
    gpu_latency_step: float, gpu_energy_step: float | None, batch: int, chip: GainCellEstimate
) -> dict[str, dict[str, float | None]]:
    """GPU / gain-cell latency and energy for one attention layer, in both normalisations.

    per_batch_step: GPU step / chip per-layer token; per_sequence_token: (GPU step / B) / chip token.
    An unknown GPU energy (no power meter) gives ``None`` for the energy ratios.
    """
    result = {}
    for name, divisor in zip(NORMALISATIONS, (1, batch), strict=True):
        gpu_latency = gpu_latency_step / divisor
        gpu_energy = None if gpu_energy_step is None else gpu_energy_step / divisor
        result[name] = {
            "gpu_latency_s": gpu_latency,
            "gpu_energy_j": gpu_energy,
            "latency_ratio": gpu_latency / chip.latency_per_layer,
            "energy_ratio": None if gpu_energy is None else gpu_energy / chip.energy_per_layer,
        }
    return result


@dataclass(frozen=True)
class WholeModel:
    """One decode step of a whole decoder on a GPU, with and without gain-cell attention (§6.3.3).

    Times in s and energies in J are per batch step; the chip side assumes one array set per sequence
    in the batch (each holds its own sequence's window), so its attention takes one chip latency per
    layer and B chip energies. Ratios are the same per step and per sequence-token.
    """

    model: str
    gpu: str
    batch: int
    window: int
    gpu_rest_latency: float  # projections, MLP and LM head, which stay on the GPU
    gpu_rest_energy: float
    gpu_attention_latency: float  # all layers
    gpu_attention_energy: float
    chip_attention_latency: float  # all layers, one token per sequence
    chip_attention_energy: float  # all layers, B sequences
    chip_area_per_sequence: float  # m²

    @property
    def attention_latency_fraction(self) -> float:
        return self.gpu_attention_latency / (self.gpu_attention_latency + self.gpu_rest_latency)

    @property
    def attention_energy_fraction(self) -> float:
        return self.gpu_attention_energy / (self.gpu_attention_energy + self.gpu_rest_energy)

    @property
    def latency_speedup(self) -> float:
        """Whole-token latency, GPU only / GPU rest + chip attention."""
        gpu = self.gpu_rest_latency + self.gpu_attention_latency
        return gpu / (self.gpu_rest_latency + self.chip_attention_latency)

    @property
    def energy_reduction(self) -> float:
        gpu = self.gpu_rest_energy + self.gpu_attention_energy
        return gpu / (self.gpu_rest_energy + self.chip_attention_energy)

    @property
    def latency_bound(self) -> float:
        """Amdahl's limit, attention made free: 1 / (1 - attention fraction)."""
        return 1.0 / (1.0 - self.attention_latency_fraction)

    @property
    def energy_bound(self) -> float:
        return 1.0 / (1.0 - self.attention_energy_fraction)


def whole_model(
    model: DecoderShape,
    device: GpuDevice,
    tech: Technology,
    window: int,
    batch: int,
    dtype: str,
    kernel: str,
    subtile_rows: int,
    *,
    normaliser: bool = False,
) -> WholeModel:
    """Amdahl view of one decode step (SPEC-hardware §6.3.3).

    GPU, rest of the model: every weight of the projections, MLPs and LM head is read once per step
    and used for B tokens, so time = max(weight bytes / bandwidth, 2 x weights x B / peak) and energy
    = time x (TDP - idle); activations (B x d_model per layer) are negligible and left out. GPU,
    attention: L x the decode-attention roofline of :mod:`gaincell.hardware.gpu`. Chip: the analytic
    model for the model's heads, head size and layers (``normaliser``: with the chip option).
    """
    weights = model.layers * model.weights_per_layer + model.lm_head_weights
    rest_latency, _ = roofline_time(device, weights * DTYPE_BYTES[dtype], 2 * weights * batch, dtype)
    layer = roofline(device, DecodeWorkload(batch, model.heads, model.head_dim, window, dtype, kernel))
    shape = AttentionShape(model.heads, model.head_dim, window, subtile_rows, model.layers)
    chip = estimate(shape, tech, normaliser=normaliser)
    return WholeModel(
        model=model.name,
        gpu=device.key,
        batch=batch,
        window=window,
        gpu_rest_latency=rest_latency,
        gpu_rest_energy=board_energy(device, rest_latency),
        gpu_attention_latency=model.layers * layer.latency_step,
        gpu_attention_energy=model.layers * layer.energy_step,
        chip_attention_latency=chip.latency_per_token,
        chip_attention_energy=batch * chip.energy_per_token,
        chip_area_per_sequence=chip.area_total,
    )


@dataclass(frozen=True)
class RetentionCheck:
    """Leakage per token step and whether the window outlives the cells' retention (§6.3.4)."""

    scenario: str
    token_period: float  # s between two generated tokens (Δt)
    retention_time: float  # τ
    window: int
    epsilon: float  # Δt / τ: the simulator's ``leakage`` (SPEC §3.3)
    window_time: float  # M x Δt: how long the oldest stored token has been held
    oldest_retained_fraction: float  # λ^(M-1) = exp(-ε (M - 1))
    outlives_retention: bool
    warning: str | None


def retention_check(tech: Technology, window: int, token_period: float, scenario: str) -> RetentionCheck:
    """ε = Δt / τ (SPEC-hardware §6.3.4), and a warning when M x Δt exceeds the retention τ.

    ε is the simulator's leakage per token step (SPEC §3.3: λ = exp(-ε), paper 1.6e-4). The paper's
    value follows from τ = 5 ms and tokens generated at the chip's own pace (12 layers x 65 ns = 0.78 µs
    per token: ε = 1.56e-4). A slower token rate, e.g. the rest of the model on a GPU, raises ε.
    """
    if not (token_period > 0 and math.isfinite(token_period)):
        raise GainCellError(f"token period must be > 0 s (--token-rate > 0 Hz), got {token_period!r}")
    tau = tech.array.retention_time
    epsilon = token_period / tau
    window_time = window * token_period
    outlives = window_time > tau
    warning = None
    if outlives:
        warning = (
            f"{scenario}: the window of {window} tokens spans {window_time:.3g} s, longer than the "
            f"{tech.name} retention of {tau:.3g} s; the oldest token keeps "
            f"{math.exp(-epsilon * (window - 1)):.2%} of its value (refresh or a shorter window needed)"
        )
    return RetentionCheck(
        scenario,
        token_period,
        tau,
        window,
        epsilon,
        window_time,
        math.exp(-epsilon * (window - 1)),
        outlives,
        warning,
    )


def with_leakage(config: Any, epsilon: float) -> Any:
    """A copy of a simulator config (``gaincell.chip.config.GainCellConfig``) with ``leakage = epsilon``.

    Works on any frozen dataclass with a ``leakage`` field, so the cost model needs no import of the
    simulator (STYLE.md: ``hardware/`` reads config only).
    """
    if not dataclasses.is_dataclass(config) or "leakage" not in {f.name for f in dataclasses.fields(config)}:
        raise GainCellError(f"with_leakage: expected a config dataclass with a 'leakage' field, got {config!r}")
    return dataclasses.replace(config, leakage=float(epsilon))
