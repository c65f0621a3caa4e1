"""The chip config is plain data: building and checking one needs neither torch nor numpy."""

import subprocess
import sys

import pytest

from gaincell import CellConfig, CellModel, GainCellError, build_cell, register_cell
from gaincell.chip.config import cell_kinds


def test_config_imports_neither_torch_nor_numpy():
    code = (
        "import sys; import gaincell.chip.config as c; c.preset('paper'); c.CellConfig(kind='sigmoid').validate(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_kind_the_config_accepts_builds():
    """The names config.py lists and the factories cells.py registers are the same set."""
    for kind in cell_kinds():
        assert build_cell(CellConfig(kind=kind)).alpha == pytest.approx(19.3)


def test_a_registered_kind_is_accepted_by_the_config():
    with pytest.raises(GainCellError, match="cell.kind"):
        CellConfig(kind="half-linear-test").validate()
    register_cell("half-linear-test", lambda cfg: CellModel("half-linear-test", (0.0, cfg.alpha / 2), cfg.alpha))
    cell = CellConfig(kind="half-linear-test")
    cell.validate()
    assert "half-linear-test" in cell_kinds()
    assert build_cell(cell).coefficients == (0.0, 19.3 / 2)
