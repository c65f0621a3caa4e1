"""Config validation, presets and JSON round-trip (SPEC §3; issue: bad configs fail fast, naming the field)."""

import dataclasses

import pytest

from gaincell import GainCellConfig, GainCellError, QuantizerConfig, preset
from gaincell.chip.config import PRESETS, CellConfig, NoiseConfig, PeripheryConfig


@pytest.mark.parametrize("name", PRESETS)
def test_presets_round_trip_through_json(name):
    config = preset(name)
    assert GainCellConfig.from_json(config.to_json()) == config


def test_paper_preset_has_spec_constants():
    config = preset("paper")
    p = config.periphery
    assert (config.window, config.subtile_rows, config.leakage) == (1024, 64, 1.6e-4)
    assert (p.q.low, p.q.high, p.q.levels) == (0.0, 1.0, 16)
    assert (p.kv.low, p.kv.high, p.kv.levels) == (0.0, 0.9, 8)
    assert (p.adc.low, p.adc.high, p.adc.levels) == (-1.0, 1.0, 32)
    assert (p.s_sat, p.readout_gain, p.offset) == (80.0, 1 / 40, 0.45)
    assert config.cell.kind == "polynomial" and config.gradient == "surrogate"
    assert preset("linear").cell.kind == "linear" and preset("linear").cell.alpha == 19.3
    ideal = preset("ideal")
    assert ideal.leakage == 0 and ideal.periphery.q.levels is None and ideal.periphery.adc.levels is None
    assert preset("softmax").attention == "softmax"


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: preset("paper", window=0), "window"),
        (lambda: preset("paper", subtile_rows=0), "subtile_rows"),
        (lambda: preset("paper", leakage=-1e-3), "leakage"),
        (lambda: preset("paper", gradient="magic"), "gradient"),
        (lambda: preset("paper", attention="linear"), "attention"),
        (lambda: preset("bogus"), "preset"),
        (lambda: GainCellConfig(periphery=PeripheryConfig(q=QuantizerConfig(0, 1, 1))), "periphery.q.levels"),
        (lambda: GainCellConfig(periphery=PeripheryConfig(kv=QuantizerConfig(0.9, 0.0, 8))), "periphery.kv"),
        (lambda: GainCellConfig(periphery=PeripheryConfig(s_sat=0)), "periphery.s_sat"),
        (lambda: GainCellConfig(cell=CellConfig(kind="quantum")), "cell.kind"),
        (lambda: GainCellConfig(noise=NoiseConfig(read_noise=-0.1)), "noise.read_noise"),
        (lambda: GainCellConfig.from_dict({"windw": 3}), "config: unknown key 'windw' (expected one of: attention, "),
        (lambda: GainCellConfig.from_dict({"periphery": {"adc": {"levelz": 3}}}), "periphery.adc: unknown key 'levelz'"),
        (lambda: GainCellConfig.from_json("{not json"), "JSON"),
    ],
)
def test_bad_values_fail_with_the_field_name(make, field):
    with pytest.raises(GainCellError) as error:
        make()
    message = str(error.value)
    assert field in message and "\n" not in message


def test_configs_are_frozen_and_replace_validates():
    config = preset("paper")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.window = 3
    assert config.replace(window=64).window == 64
    with pytest.raises(GainCellError, match="window"):
        config.replace(window=-1)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_cell_coefficient_is_refused(value):
    with pytest.raises(GainCellError, match="cell.coefficients must be a list of .* triples of finite numbers"):
        GainCellConfig.from_dict({"cell": {"coefficients": [[0, 0, value]]}})
    with pytest.raises(GainCellError, match="cell.coefficients must be"):
        CellConfig(coefficients=((0, 0, 0.1), 5)).validate()


def test_a_misspelt_field_is_named_with_the_valid_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    from gaincell import convert

    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
    expected = r"^config: unknown key 'windw' \(expected one of: attention, block_size, .*, window\)$"
    with pytest.raises(GainCellError, match=expected):
        convert(model, "paper", windw=8)
    with pytest.raises(GainCellError, match=expected):
        preset("paper").replace(windw=8)
