"""Cell models (SPEC §3.3–3.4): the paper's polynomial, the linear fit and the alternatives."""

import torch

from gaincell import CellConfig, CellModel, build_cell, register_cell
from gaincell.config import PAPER_COEFFICIENTS, GainCellConfig


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


def test_alternatives_span_alpha_range_and_fit_well():
    y = torch.linspace(-0.45, 0.45, 101, dtype=torch.float64)
    for kind in ("cubic", "quintic", "sigmoid", "exp"):
        cell = build_cell(CellConfig(kind=kind))
        g = cell.true_g(y)
        torch.testing.assert_close(g[[0, -1]], torch.tensor([-0.45, 0.45], dtype=torch.float64) * 19.3)
        assert (cell.g(y) - g).abs().max() <= max(cell.fit_error * 1.01, 1e-9)
        assert cell.fit_error < 1e-3 * 19.3 * 0.45, kind


def test_cells_are_pluggable():
    register_cell("tanh-test", lambda cfg: CellModel("tanh-test", (0.0, cfg.alpha, 0.0, -cfg.alpha), cfg.alpha))
    config = GainCellConfig(cell=CellConfig(kind="tanh-test"))
    assert build_cell(config.cell).coefficients == (0.0, 19.3, 0.0, -19.3)
