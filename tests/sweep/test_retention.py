"""Retention time and token rate as knobs: ε as ``gaincell hw`` computes it, from [base] or the grid."""

from __future__ import annotations

import dataclasses
import math

import pytest
from sweep_files import spec_dict, write_toml

from gaincell.cli import main
from gaincell.hardware.compare import retention_check
from gaincell.hardware.constants import load_technology
from gaincell.sweep import report
from gaincell.sweep.run import point_config, run_sweep, spec_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")

RETENTIONS = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]  # 0.1 ms to 1 s


def hw_epsilon(retention: float, rate: float, window: int) -> float:
    tech = load_technology("paper")
    tech = dataclasses.replace(tech, array=dataclasses.replace(tech.array, retention_time=retention))
    return retention_check(tech, window, 1 / rate, "hw").epsilon


@pytest.mark.parametrize("where", ["base", "grid"])
def test_retention_grid_at_one_token_rate_is_hw_epsilon(files, where):
    data = spec_dict(files, grid={"retention_time": RETENTIONS, "window": [16]})
    if where == "base":
        data["base"] = {"token_rate": 2e4}
    else:
        data["grid"]["token_rate"] = [2e4]
    spec = spec_from_dict(data)
    epsilons = [point_config(spec, point, 0).leakage for point in spec.points]
    assert epsilons == [hw_epsilon(tau, 2e4, 16) for tau in RETENTIONS]
    assert epsilons[0] == pytest.approx(0.5)  # 50 µs per token against 0.1 ms


def test_token_rate_alone_uses_the_technology_retention(files):
    spec = spec_from_dict(spec_dict(files, grid={"token_rate": [1e3, 1e6]}))
    tau = load_technology("paper").array.retention_time
    assert [point_config(spec, p, 0).leakage for p in spec.points] == [1e-3 / tau, 1e-6 / tau]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"grid": {"retention_time": [1e-3]}}, "grid.retention_time: needs token_rate (Hz) too, in [base] or the grid"),
        ({"base": {"retention_time": 1e-3}, "grid": {"window": [16]}}, "base.retention_time: needs token_rate"),
        ({"base": {"token_rate": -1.0}, "grid": {"retention_time": [1e-3]}}, "base.token_rate must be a finite number > 0"),
        ({"base": {"token_rate": 1e3}, "grid": {"retention_time": [0]}}, "grid.retention_time must be a finite number > 0"),
    ],
)
def test_bad_leakage_knobs_are_one_line(files, tmp_path, capsys, change, message):
    config = write_toml(tmp_path / "s.toml", spec_dict(files, output_dir=str(tmp_path / "out"), **change))
    assert main(["sweep", config]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gaincell sweep: error: {message}"), err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_report_plots_perplexity_against_retention_on_a_log_axis(files, tmp_path, monkeypatch):
    scales = {}

    def keep_scale(figure, path):
        scales[path.name] = figure.axes[0].get_xscale()
        return saved(figure, path)

    saved = report._save
    monkeypatch.setattr(report, "_save", keep_scale)
    # ideal: no quantisers, so the untrained tiny model's read-outs are not all rounded to the same 0
    data = spec_dict(files, output_dir=str(tmp_path / "o"), max_tokens=130, seeds=[0], preset="ideal")
    data |= {"base": {"token_rate": 1e4}, "grid": {"retention_time": [1e-4, 1e-2, 1.0]}}
    rows = run_sweep(spec_from_dict(data), progress=False)["rows"][1:]
    assert scales["ppl_vs_retention_time.png"] == "log"
    assert [row["leakage"] for row in rows] == [hw_epsilon(tau, 1e4, 32) for tau in (1e-4, 1e-2, 1.0)]
    assert math.isfinite(rows[0]["ppl_mean"]) and rows[0]["ppl_mean"] != rows[2]["ppl_mean"]  # ε = 1 forgets, 1e-4 hardly
    text = (tmp_path / "o" / "report.md").read_text()
    assert "| leakage ε |" in text and "| 1 | 0.01 | 0.01 |" in text
