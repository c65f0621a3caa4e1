"""The sourced presets of the cost model load, convert units, and reject bad input by name."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from gaincell.errors import GainCellError
from gaincell.hardware.constants import TECH_PRESETS, load_gpus, load_reference, load_technology


def _paper_text() -> str:
    return resources.files("gaincell.hardware").joinpath("presets").joinpath("paper.toml").read_text("utf-8")


def _write(tmp_path, text: str):
    path = tmp_path / "tech.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", TECH_PRESETS)
def test_every_constant_has_a_unit_and_a_source(name):
    tech = load_technology(name)
    assert tech.name == name
    assert len(tech.records) == 24
    for record in tech.records:
        assert record.unit and record.source, record.key
        assert record.si_value >= 0


def test_units_are_converted_to_si():
    tech = load_technology("paper")
    assert tech.array.max_pulse_width == pytest.approx(15e-9)
    assert tech.array.retention_time == pytest.approx(5e-3)
    assert tech.array.cell_area == pytest.approx(1e-12)  # 1 µm²
    assert tech.array.read_power_per_cell == pytest.approx(0.8e-6)  # 0.8 fJ/ns = 0.8 µW
    assert tech.periphery.adc_energy_per_conversion == pytest.approx(0.3e-12)
    assert tech.digital.control_energy_per_head == pytest.approx(3.46e-9)


def test_calibrated_constants_say_so():
    """Constants derived from the paper's totals name that derivation in their source."""
    records = {r.key: r for r in load_technology("paper").records}
    for key in (
        "array.read_power_per_cell",
        "periphery.dac_energy_per_row",
        "periphery.c2p_energy_per_column",
        "digital.control_energy_per_head",
        "digital.control_time",
    ):
        assert records[key].source.startswith("calibrated:"), key


def test_osfet_differs_from_paper_in_the_cell():
    paper, osfet = load_technology("paper"), load_technology("osfet")
    assert osfet.array.retention_time > 1e5 * paper.array.retention_time
    assert osfet.periphery == paper.periphery and osfet.digital == paper.digital


def test_a_user_file_with_other_units_loads(tmp_path):
    text = _paper_text().replace('value = 0.3, unit = "pJ"', 'value = 300, unit = "fJ"')
    tech = load_technology(_write(tmp_path, text))
    assert tech.periphery.adc_energy_per_conversion == pytest.approx(0.3e-12)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace("value = 0.3, unit", "value = -0.3, unit"),
            r"adc_energy_per_conversion' must be >= 0",
        ),
        (
            lambda t: t.replace('value = 10, unit = "ns"', 'value = 10, unit = "pJ"'),
            r"adc_time' unit 'pJ' is not a time",
        ),
        (
            lambda t: t.replace("adc_time =", "adc_tme ="),
            r"unknown field\(s\) \['adc_tme'\] in \[periphery\]",
        ),
        (lambda t: re.sub(r"(?m)^adc_area = .*$", "", t), r"missing field\(s\) \['adc_area'\]"),
        (lambda t: t.replace("value = 15, unit", "value = 0, unit"), r"max_pulse_width' must be > 0"),
        (
            lambda t: t.replace("value = 0.5, unit", "value = 1.5, unit"),
            r"pulse_activity' must be in \[0, 1.0\]",
        ),
        (
            lambda t: t.replace("value = 0.5, unit", 'value = "half", unit'),
            r"pulse_activity' value must be a finite",
        ),
        (
            lambda t: t.replace(', source = "Horowitz', ', old = "Horowitz'),
            r"'digital.adder_energy_per_add' must be",
        ),
        (
            lambda t: re.sub(r'source = "Horowitz[^"]*"', 'source = " "', t),
            r"adder_energy_per_add' needs a non-empty",
        ),
        (lambda t: t + "\n[extra]\n", r"unknown table\(s\) \['extra'\]"),
        (lambda t: t.replace("[digital]", "[digital"), r"not valid TOML"),
    ],
)
def test_bad_technology_files_are_rejected_by_name(tmp_path, edit, message):
    with pytest.raises(GainCellError, match=message):
        load_technology(_write(tmp_path, edit(_paper_text())))


def test_unknown_preset_and_missing_file_are_user_errors(tmp_path):
    with pytest.raises(GainCellError, match=r"--tech: unknown preset 'sram'; choose from \['paper', 'osfet'\]"):
        load_technology("sram")
    with pytest.raises(GainCellError, match="no such file"):
        load_technology(tmp_path / "missing.toml")


def test_gpu_table_holds_the_named_devices_with_public_figures():
    gpus = load_gpus()
    assert list(gpus) == ["rtx4090", "jetson-nano", "a100", "h100", "h200"]
    assert gpus["rtx4090"].bandwidth == pytest.approx(1008e9)
    assert gpus["jetson-nano"].bandwidth == pytest.approx(25.6e9)
    assert gpus["h200"].bandwidth > gpus["h100"].bandwidth > gpus["a100"].bandwidth
    for device in gpus.values():
        assert device.tdp > device.idle_power > 0
        assert all(record.source for record in device.records)


def test_reference_holds_the_papers_figures():
    reference = load_reference()
    assert (reference.heads, reference.head_dim, reference.window, reference.batch) == (12, 64, 1024, 64)
    cell = reference.gain_cell
    parts = cell.first_product + cell.second_product + cell.digital + cell.dac
    assert parts == pytest.approx(cell.per_head)
    assert 12 * cell.per_head == pytest.approx(cell.per_layer)
    assert reference.gpus["rtx4090"].latency_per_sequence_token == pytest.approx(22.37e-6)
    assert reference.gpus["jetson-nano"].energy_per_sequence_token == pytest.approx(3.246e-3)
