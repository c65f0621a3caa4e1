"""Gain-cell attention as SPEC §3 writes it, equation by equation, on (B, H, T, D) tensors.

Read it beside SPEC: the front end (§3.2), the first analog product with leakage (§3.3–3.4), the
charge-to-pulse converter, the second analog product, one ADC per sub-tile, the digital sum, the
optional normaliser (ours, :mod:`gaincell.op.normaliser`) and the output scaler. It forms T×T score
tensors, so it is for reading, for checking the fast kernel (:mod:`gaincell.op.kernels.banded`
computes the same numbers in O(T·M·D) time and is tested against this) and for short sequences;
models call :func:`gaincell.op.attention.gain_cell_attention`.

Leakage acts on the stored voltage, y~ → λ^age·y~, so with the cell curve g(y~) = Σ_i β_i y~^i the
charge of power i decays as λ^(i·age): each power is one T×T matmul of pulses and stored y~^i.
"""

from __future__ import annotations

import math

import torch

from gaincell.chip.cells import CellGains, CellModel, build_cell
from gaincell.chip.config import GainCellConfig
from gaincell.chip.periphery import adc, charge_to_pulse, quantize_ste
from gaincell.op.normaliser import divide, ones_value
from gaincell.op.scalers import Scalers


def front_end(q, k, v, scalers: Scalers, config: GainCellConfig):
    """§3.2: per-head scalers, clamp + quantise (STE), offsets. Returns pulse widths Q and stored k~, v~."""
    periphery = config.periphery
    pulses = quantize_ste(scalers.apply("q", q), periphery.q)
    keys = quantize_ste(scalers.apply("k", k), periphery.kv) - periphery.offset
    values = quantize_ste(scalers.apply("v", v), periphery.kv) - periphery.offset
    return pulses, keys, values


def first_product(pulses, keys, retained, gain_k, betas):
    """S_tn = Σ_d Q_td · gain_nd · g(λ^(t−n) k~_nd) = Σ_i β_i λ^(i(t−n)) Σ_d Q_td gain_nd k~_nd^i."""
    return sum(beta * retained**i * (pulses @ (gain_k * keys**i).transpose(-1, -2)) for i, beta in enumerate(betas) if beta)


def second_product(widths, values, retained, gain_v, betas):
    """Σ_n P_tn · gain_nd · g(λ^(t−n) v~_nd) = Σ_i β_i Σ_n P_tn λ^(i(t−n)) gain_nd v~_nd^i."""
    return sum(beta * (widths * retained**i) @ (gain_v * values**i) for i, beta in enumerate(betas) if beta)


def _analog(product, cell: CellModel, surrogate: bool, *args):
    """The product through the cell; with ``surrogate`` its value, but the gradient of the linear
    cell α·y~ (SPEC §3.4: the authors backpropagate the linear model through the nonlinear one)."""
    value = product(*args, cell.coefficients)
    if not surrogate or cell.is_linear:
        return value
    linear = product(*args, (0.0, cell.alpha))
    return linear + (value - linear).detach()


def gain_cell_attention_equations(
    q, k, v, scalers: Scalers | None, config: GainCellConfig, *, gains: CellGains | None = None
) -> torch.Tensor:
    """SPEC §3.1 (softmax) or §3.2–3.5 (gain cells) for (B, H, T, D) tensors, in O(T²) memory.

    Read noise (§3.5) is drawn from torch's RNG, so it is statistically, not bitwise, the kernel's.
    """
    length, dim = q.shape[2], q.shape[3]
    position = torch.arange(length, device=q.device)
    age = position[:, None] - position[None, :]
    visible = (age >= 0) & (age < config.window)  # causal sliding window (§2)
    if config.attention == "softmax":  # §3.1
        scores = (q @ k.transpose(-1, -2) / math.sqrt(dim)).masked_fill(~visible, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v

    periphery, cell = config.periphery, build_cell(config.cell)
    surrogate, noise = config.gradient == "surrogate", config.noise.read_noise
    pulses, keys, values = front_end(q, k, v, scalers, config)
    retained = torch.exp(-config.leakage * age.clamp(min=0).to(q.dtype)) * visible  # λ^(t−n) in the window
    gain_k = gain_v = torch.ones((), dtype=q.dtype, device=q.device)
    if gains is not None:  # §3.5 variability: each cell's charge times its gain, by physical slot
        gain_k, gain_v = (g.to(q.dtype) for g in gains.at_positions(position))

    scores = _analog(first_product, cell, surrogate, pulses, keys, retained, gain_k)
    if noise:  # §3.5 read noise, a fraction of full scale
        scores = scores + noise * periphery.s_sat * torch.randn_like(scores)
    widths = charge_to_pulse(scores, periphery.s_sat) * visible  # P_tn; no pulse outside the window

    subtile = (position % config.window) // config.subtile_rows  # physical sub-tile of token n
    out = torch.zeros_like(q)
    ones = torch.full_like(values[..., :1], ones_value(config))  # the normaliser's column (option)
    gain_ones = gain_v[..., :1] if gain_v.dim() else gain_v  # its cells: value column 0's (normaliser.py)
    denominator = torch.zeros_like(q[..., :1])
    for s in range(config.n_subtiles):
        in_tile = visible & (subtile[None, :] == s)
        partial = periphery.readout_gain * _analog(
            second_product, cell, surrogate, widths * in_tile, values, retained, gain_v
        )
        if noise:
            partial = partial + noise * periphery.adc.high * torch.randn_like(partial)
        occupied = in_tile.any(dim=1)[:, None]  # a sub-tile holding no visible token is not converted
        out = out + adc(partial, periphery.adc) * occupied
        if periphery.normaliser:  # the ones column: same pulses and cells, an ideal converter, summed
            column = periphery.readout_gain * _analog(
                second_product, cell, surrogate, widths * in_tile, ones, retained, gain_ones
            )
            if noise:
                column = column + noise * periphery.adc.high * torch.randn_like(column)
            denominator = denominator + column * occupied
    if periphery.normaliser:  # the digital divider (a named deviation, gaincell.op.normaliser)
        out = divide(out, denominator)
    return scalers.apply("o", out)
