"""A deliberately naive dense gain-cell attention, written straight from SPEC §3 (tests only).

T×T tensors and a loop over sub-tiles. Leakage is applied where the physics puts it, on the stored
offset voltage (y~ → λ^age · y~) inside the cell curve, rather than through the per-power
factorisation the fast op uses, so agreement checks that factorisation too.

Nothing here comes from the package's quantiser or cell code: the quantiser, the paper's
coefficients and the alternative cells are written out from SPEC's text, so a wrong formula in the
package cannot hide behind a shared helper. Only the config (which knob has which value) is read.
"""

from __future__ import annotations

import math

import torch

from gaincell.chip.config import GainCellConfig

#: SPEC §3.4: c_ij of f(x, y~) = Σ c_ij 0.9^j x y~^i, keyed (i, j).
SPEC_COEFFICIENTS = {
    (0, 0): 0.17393044,
    (0, 1): 0.15653739,
    (0, 2): 0.14088365,
    (0, 3): 0.12679529,
    (1, 0): 5.51975209,
    (1, 1): 4.96777688,
    (1, 2): 4.4709992,
    (2, 0): -1.44776001,
    (2, 1): -1.30298401,
    (3, 0): 46.05483778,
}

#: SPEC §3.4 alternative nonlinearities f, used as g(y~) = c·(f(y~) − f(0)), c = α / (f(0.45) − f(−0.45)).
SPEC_ALTERNATIVES = {
    "cubic": lambda y: y**3,
    "quintic": lambda y: y**5,
    "sigmoid": lambda y: torch.sigmoid(10 * y),
    "exp": lambda y: torch.exp(3 * y),
}


def spec_cell_curve(kind: str, alpha: float = 19.3, read_voltage: float = 0.9):
    """g(y~), the charge per unit pulse width of a cell holding offset voltage y~ (SPEC §3.3–3.4)."""
    if kind == "linear":
        return lambda y: alpha * y
    if kind == "polynomial":
        return lambda y: sum(c * read_voltage**j * y**i for (i, j), c in SPEC_COEFFICIENTS.items())
    f = SPEC_ALTERNATIVES[kind]
    y_max = torch.tensor(0.45, dtype=torch.float64)
    c = alpha / float(f(y_max) - f(-y_max))
    f0 = float(f(torch.tensor(0.0, dtype=torch.float64)))
    return lambda y: c * (f(y) - f0)


def _quantize(x, quantizer):
    """SPEC §3.2: clamp, then x_q = step · round(x / step), step = (high − low)/(levels − 1);
    the named alternative grid ``ends`` counts the levels from ``low`` instead of from 0."""
    x = x.clamp(quantizer.low, quantizer.high)
    if quantizer.levels is None:
        return x
    step = (quantizer.high - quantizer.low) / (quantizer.levels - 1)
    if quantizer.grid == "ends":
        return quantizer.low + step * torch.round((x - quantizer.low) / step)
    return step * torch.round(x / step)


def _ste(x, quantizer):
    clamped = x.clamp(quantizer.low, quantizer.high)
    return clamped + (_quantize(clamped, quantizer) - clamped).detach()


def reference_attention(q, k, v, scalers, config: GainCellConfig, gains=None):
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
    alpha = config.cell.alpha
    curve = spec_cell_curve(config.cell.kind, alpha, config.cell.read_voltage)

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
    linear_k, linear_v = alpha * leaked_keys, alpha * leaked_values
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
