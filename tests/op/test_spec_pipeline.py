"""External check: SPEC §3.2–3.4's whole quantised pipeline, rebuilt here in plain numpy loops.

Every constant is written from SPEC's text in this file (quantiser steps, the cell's coefficients,
S_sat, the read-out gain, the ADC grid, sub-tile placement); nothing is imported from gaincell but
the op under test and its config. The cases are hand-made so that one occupied sub-tile reads out
exactly 0 (every visible key gives a negative score, so no pulse reaches the second array) and one
saturates at +1 and at −1 (which the ADC's grid k·2/31 rounds to ±16·2/31).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gaincell import Scalers, gain_cell_attention, preset

C_IJ = {  # SPEC §3.4, keyed (i, j)
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
PAPER_BETAS = [sum(c * 0.9**j for (i, j), c in C_IJ.items() if i == power) for power in range(4)]
LINEAR_BETAS = [0.0, 19.3]
S_SAT, READOUT_GAIN = 80.0, 1 / 40
Q_STEP, KV_STEP, ADC_STEP = 1 / 15, 0.9 / 7, 2 / 31


def spec_quantize(x, low, high, step):
    """SPEC §3.2: clamp, then x_q = step · round(x / step) (numpy rounds half to even, as torch)."""
    return step * np.round(np.clip(x, low, high) / step)


def spec_head(q, k, v, scalers, betas, window, rows, leakage):
    """One head, (T, D) arrays and scalers {name: (a, b)}; returns the output and each (t, sub-tile) read-out."""
    length, dim = q.shape
    pulses = spec_quantize(scalers["q"][0] * q + scalers["q"][1], 0.0, 1.0, Q_STEP)
    keys = spec_quantize(scalers["k"][0] * k + scalers["k"][1], 0.0, 0.9, KV_STEP) - 0.45
    values = spec_quantize(scalers["v"][0] * v + scalers["v"][1], 0.0, 0.9, KV_STEP) - 0.45
    retained = np.exp(-leakage)  # λ per token step
    n_subtiles = -(-window // rows)
    out = np.zeros((length, dim))
    readouts = {}
    for t in range(length):
        visible = range(max(0, t - window + 1), t + 1)
        partial = {}
        for n in visible:
            age = t - n
            score = sum(betas[i] * retained ** (i * age) * np.dot(pulses[t], keys[n] ** i) for i in range(len(betas)))
            pulse = min(max(score / S_SAT, 0.0), 1.0)
            charge = sum(betas[i] * pulse * retained ** (i * age) * values[n] ** i for i in range(len(betas)))
            subtile = (n % window) // rows
            partial[subtile] = partial.get(subtile, 0.0) + READOUT_GAIN * charge
        for subtile in range(n_subtiles):
            if subtile in partial:
                readouts[t, subtile] = partial[subtile]
                out[t] += spec_quantize(partial[subtile], -1.0, 1.0, ADC_STEP)
    a_o, b_o = scalers["o"]
    return a_o * out + b_o, readouts


def hand_made_case(length, window, rows, seed):
    """q, k, v (H=2, D=4): random, but the keys of sub-tile 0's first rows all read negative and sub-tile 1
    holds full-scale keys with values at both rails, so its read-outs saturate."""
    rng = np.random.default_rng(seed)
    dim = 4
    q = rng.uniform(0.2, 1.0, (2, length, dim))
    k = rng.uniform(-0.45, 0.45, (2, length, dim))
    v = rng.uniform(-0.45, 0.45, (2, length, dim))
    k[:, :rows] = -1.0  # stored 0 V, k~ = −0.45: g(−0.45) < 0, so S < 0 and P = 0 for every query
    saturating = slice(rows, 2 * rows)
    k[:, saturating] = 1.0  # stored 0.9 V: g(0.45) > 0, large S
    v[:, saturating, 0], v[:, saturating, 1] = 1.0, -1.0  # columns driven to +rail and −rail
    heads = [{"q": (1.0, 0.0), "k": (1.0, 0.45), "v": (1.0, 0.45), "o": (1.0, 0.0)}]
    heads.append({"q": (0.9, 0.05), "k": (1.1, 0.44), "v": (0.95, 0.46), "o": (1.3, -0.02)})
    return q, k, v, heads


def gaincell_output(q, k, v, heads, config):
    scalers = Scalers(len(heads)).double()
    with torch.no_grad():
        for name in Scalers.names:
            getattr(scalers, f"a_{name}").copy_(torch.tensor([h[name][0] for h in heads], dtype=torch.float64))
            getattr(scalers, f"b_{name}").copy_(torch.tensor([h[name][1] for h in heads], dtype=torch.float64))
    inputs = [torch.from_numpy(x)[None] for x in (q, k, v)]
    with torch.no_grad():
        return gain_cell_attention(*inputs, scalers, config)[0].numpy()


CASES = [  # (name, T, window M, sub-tile rows R, leakage); T = 200 > M wraps around the circular array
    ("paper", 64, 64, 16, 1.6e-4),
    ("paper", 64, 64, 32, 5e-3),
    ("paper", 200, 128, 64, 1.6e-4),
    ("paper", 200, 96, 32, 2e-3),
    ("linear", 64, 64, 16, 1.6e-4),
    ("linear", 200, 128, 64, 2e-3),
]


@pytest.mark.parametrize("name, length, window, rows, leakage", CASES)
def test_gaincell_equals_spec_pipeline(name, length, window, rows, leakage):
    q, k, v, heads = hand_made_case(length, window, rows, seed=length + rows)
    config = preset(name, window=window, subtile_rows=rows, leakage=leakage, block_size=32)
    ours = gaincell_output(q, k, v, heads, config)
    betas = PAPER_BETAS if name == "paper" else LINEAR_BETAS
    for head, scalers in enumerate(heads):
        expected, readouts = spec_head(q[head], k[head], v[head], scalers, betas, window, rows, leakage)
        np.testing.assert_allclose(ours[head], expected, rtol=0, atol=1e-5)
        values = np.array(list(readouts.values()))
        assert (values == 0).any(), "no occupied sub-tile reads exactly 0: the case misses its point"
        assert (values > 1).any() and (values < -1).any(), "no read-out saturates at both rails"


def test_spec_adc_grid_differs_from_the_ends_grid():
    """The same case on the named alternative grid (levels at −1 + k·2/31) moves each occupied
    sub-tile's level by 1/31 or so, so the test above really pins SPEC's grid."""
    q, k, v, heads = hand_made_case(64, 64, 16, seed=80)
    config = preset("paper", window=64, subtile_rows=16)
    ends = config.replace(
        periphery=dataclasses.replace(config.periphery, adc=dataclasses.replace(config.periphery.adc, grid="ends"))
    )
    expected, _ = spec_head(q[0], k[0], v[0], heads[0], PAPER_BETAS, 64, 16, 1.6e-4)
    np.testing.assert_allclose(gaincell_output(q, k, v, heads, config)[0], expected, rtol=0, atol=1e-5)
    assert np.abs(gaincell_output(q, k, v, heads, ends)[0] - expected).max() > 0.5 / 31
