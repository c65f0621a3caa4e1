"""Cell models (SPEC §3.3–3.4): the paper's polynomial, the linear fit and the alternatives."""

import pytest
import torch

from gaincell import CellConfig, CellModel, build_cell, register_cell
from gaincell.chip.config import PAPER_COEFFICIENTS, GainCellConfig


def test_paper_polynomial_matches_the_double_sum():
    cell = build_cell(CellConfig())
    x = torch.rand(50, dtype=torch.float64)
    y = torch.rand(50, dtype=torch.float64) * 0.9 - 0.45
    direct = sum(c * 0.9**j * x * y**i for i, j, c in PAPER_COEFFICIENTS)
    torch.testing.assert_close(cell.charge(x, y), direct, rtol=1e-12, atol=1e-12)
    assert cell.degree == 3 and not cell.is_linear


def test_linear_cell_is_alpha_times_y():
    cell = build_cell(CellConfig(kind="linear"))
    assert cell.coefficients == (0.0, 19.3) and cell.is_linear


#: SPEC §3.4, g(y~) = c·(f(y~) − f(0)), c = 19.3 / (f(0.45) − f(−0.45)), evaluated by hand at
#: y~ = −0.45, −0.2, 0.1, 0.45: g(0) = 0 and g(0.45) − g(−0.45) = 19.3 for every cell.
ALTERNATIVE_VALUES = {
    "cubic": (-9.65, -0.847188, 0.105898, 9.65),  # c = 105.898491
    "quintic": (-9.65, -0.167346, 0.005230, 9.65),  # c = 522.955512
    "sigmoid": (-9.65, -7.514507, 4.559623, 9.65),  # f = sigmoid(10 y), c = 19.733624
    "exp": (-3.973298, -2.420091, 1.876578, 15.326702),  # f = exp(3 y), c = 5.363815
}


@pytest.mark.parametrize("kind", sorted(ALTERNATIVE_VALUES))
def test_alternative_cells_follow_spec(kind):
    cell = build_cell(CellConfig(kind=kind))
    y = torch.tensor([-0.45, -0.2, 0.1, 0.45], dtype=torch.float64)
    expected = torch.tensor(ALTERNATIVE_VALUES[kind], dtype=torch.float64)
    torch.testing.assert_close(cell.true_g(y), expected, rtol=0, atol=2e-6)
    torch.testing.assert_close(cell.g(y), expected, rtol=0, atol=max(cell.fit_error * 1.01, 2e-6))
    zero = torch.zeros(1, dtype=torch.float64)
    assert abs(float(cell.true_g(zero))) < 1e-12 and abs(float(cell.g(zero))) <= max(cell.fit_error * 1.01, 1e-12)
    grid = torch.linspace(-0.45, 0.45, 4001, dtype=torch.float64)
    assert float(cell.true_g(grid).max() - cell.true_g(grid).min()) == pytest.approx(19.3, abs=1e-9)
    assert (cell.g(grid) - cell.true_g(grid)).abs().max() <= max(cell.fit_error * 1.01, 1e-9)
    assert cell.fit_error < 1e-3 * 19.3 * 0.45, kind


def test_cells_are_pluggable():
    register_cell("tanh-test", lambda cfg: CellModel("tanh-test", (0.0, cfg.alpha, 0.0, -cfg.alpha), cfg.alpha))
    config = GainCellConfig(cell=CellConfig(kind="tanh-test"))
    assert build_cell(config.cell).coefficients == (0.0, 19.3, 0.0, -19.3)
