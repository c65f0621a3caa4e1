"""The authors' own single-array simulation (golden/ in the shared data folder) against our `ideal` preset.

Their run: window 64, causal, no quantisation, no leakage, scalers a = 1, b = 0. Their reduced
precision allows ~0.5 absolute on S and ~1e-2 on phi(S) and the output (the shared data folder's README).
"""

import numpy as np
import pytest
import torch

from gaincell import Scalers, gain_cell_attention, preset
from gaincell.op.kernels.primitives import analog_read, make_band, make_plan

pytestmark = pytest.mark.needs_data("golden/single_array_64x64.npz")


@pytest.fixture(scope="module")
def golden(shared_data):
    data = np.load(shared_data / "golden" / "single_array_64x64.npz")
    return {name: torch.from_numpy(data[name]).double() for name in ("Q", "K", "V", "S", "phi_S", "output")}


def test_output_matches_authors_simulation(golden):
    config = preset("ideal", window=64, subtile_rows=64)
    scalers = Scalers(10).double()
    with torch.no_grad():
        for name in ("k", "v"):
            getattr(scalers, f"b_{name}").zero_()  # their K, V are the stored voltages already
    q, k, v = (golden[name][None] for name in ("Q", "K", "V"))  # 10 arrays as 10 heads
    out = gain_cell_attention(q, k, v, scalers, config)[0]
    assert (out - golden["output"]).abs().max() < 1e-2


def test_scores_and_pulses_match_authors_simulation(golden):
    """Check the first product and the charge-to-pulse step on their own, via the kernel's read."""
    config = preset("ideal", window=64, subtile_rows=64)
    plan = make_plan(config, False)
    positions = torch.arange(64)
    band = make_band(plan, positions, positions, 0, torch.zeros(1, dtype=torch.long))
    pulses, keys, values = golden["Q"], golden["K"] - 0.45, golden["V"] - 0.45
    _, (scores, widths, _) = analog_read(plan, pulses, keys, values, None, None, band, keep=True)
    causal = torch.tril(torch.ones(64, 64, dtype=torch.bool))
    assert (scores * causal - golden["S"]).abs().max() < 0.5
    assert (widths - golden["phi_S"]).abs().max() < 1e-2
