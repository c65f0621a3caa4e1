"""A deliberately naive dense gain-cell attention, written straight from SPEC §3 (tests only).

T×T tensors and a loop over sub-tiles. Leakage is applied where the physics puts it, on the stored
offset voltage (y~ → λ^age · y~) inside the cell curve, rather than through the per-power
factorisation the fast op uses, so agreement checks that factorisation too.
"""

from __future__ import annotations

import math

import torch

from gaincell.cells import build_cell
from gaincell.config import GainCellConfig


def _quantize(x, quantizer):
    x = x.clamp(quantizer.low, quantizer.high)
    if quantizer.levels is None:
        return x
    step = (quantizer.high - quantizer.low) / (quantizer.levels - 1)
    return quantizer.low + step * torch.round((x - quantizer.low) / step)


def _ste(x, quantizer):
    clamped = x.clamp(quantizer.low, quantizer.high)
    return clamped + (_quantize(clamped, quantizer) - clamped).detach()


def reference_attention(q, k, v, scalers, config: GainCellConfig, gains=None, use_true_curve=False):
    """SPEC §3.1 (softmax) or §3.2–3.5 (gain cells, no read noise) for (B, H, T, D) tensors.

    With ``config.gradient == "surrogate"`` each analog product is linear_product + (cell_product −
    linear_product).detach(): the value of the cell, the gradient of the linear product α·x·y with
    respect to both its pulses and its stored values (SPEC §3.4).
    """
    batch, heads, length, dim = q.shape
    window = config.window
    t = torch.arange(length)[:, None]
    n = torch.arange(length)[None, :]
    age = t - n
    visible = (age >= 0) & (age < window)  # (T, T)
    if config.attention == "softmax":
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim)
        scores = scores.masked_fill(~visible, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v

    periphery = config.periphery
    cell = build_cell(config.cell)
    curve = cell.true_g if use_true_curve else cell.g

    def scale(name, x):
        a = getattr(scalers, f"a_{name}")[:, None, None]
        b = getattr(scalers, f"b_{name}")[:, None, None]
        return a * x + b

    pulses = _ste(scale("q", q), periphery.q)
    keys = _ste(scale("k", k), periphery.kv) - periphery.offset
    values = _ste(scale("v", v), periphery.kv) - periphery.offset
    retained = torch.exp(-config.leakage * age.clamp(min=0).to(q.dtype))  # λ^age, (T, T)

    # Leaked stored voltages seen by query t: (B, H, T_query, T_key, D).
    leaked_keys = retained[None, None, :, :, None] * keys[:, :, None, :, :]
    leaked_values = retained[None, None, :, :, None] * values[:, :, None, :, :]
    cell_k = curve(leaked_keys)
    cell_v = curve(leaked_values)
    surrogate = config.gradient == "surrogate"
    linear_k, linear_v = cell.alpha * leaked_keys, cell.alpha * leaked_values
    if gains is not None:
        slots = torch.arange(length) % window
        gain_k = gains.key[:, slots].to(q.dtype)[None, :, None]
        gain_v = gains.value[:, slots].to(q.dtype)[None, :, None]
        cell_k, cell_v, linear_k, linear_v = cell_k * gain_k, cell_v * gain_v, linear_k * gain_k, linear_v * gain_v

    def product(weights, cell_values, linear_values, dim):
        value = (weights * cell_values).sum(dim)
        if not surrogate:
            return value
        linear = (weights * linear_values).sum(dim)
        return linear + (value - linear).detach()

    scores = product(pulses[:, :, :, None, :], cell_k, linear_k, -1)  # S_tn = Σ_d Q_td g(λ^a k~_nd)
    phi = (scores / periphery.s_sat).clamp(0, 1) * visible

    subtile = (torch.arange(length) % window) // config.subtile_rows
    out = torch.zeros_like(q)
    for s in range(config.n_subtiles):
        in_tile = visible & (subtile[None, :] == s)  # (T, T)
        partial = product((phi * in_tile)[..., None], cell_v, linear_v, 3) * periphery.readout_gain
        occupied = in_tile.any(dim=1)[None, None, :, None]
        out = out + _ste(partial, periphery.adc) * occupied
    return scale("o", out)
