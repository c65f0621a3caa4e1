"""The rule a fast form is held to against the equations (gaincell.op.agreement), on hand-made outputs."""

import pytest
import torch

from gaincell import preset
from gaincell.op.agreement import agreement


def _grid_outputs(apart: int, total: int = 4000):
    """A reference on the paper ADC's grid and a copy with ``apart`` outputs moved by one step."""
    config = preset("paper")
    step = config.periphery.adc.step
    reference = step * torch.arange(total, dtype=torch.float32).remainder(7)
    fast = reference.clone()
    fast[:apart] += step
    return fast, reference, config, step


def test_a_few_outputs_one_step_apart_pass_and_more_fail():
    fast, reference, config, step = _grid_outputs(4)  # 0.1 %: the limit
    check = agreement(fast, reference, config)
    assert check.passed and check.step == step and check.share_apart == 4 / 4000
    assert check.mean_difference == pytest.approx(4 * step / 4000, rel=1e-6)
    assert not agreement(*_grid_outputs(5)[:3]).passed  # 0.125 %


def test_a_difference_under_half_a_step_everywhere_is_held_by_the_mean():
    fast, reference, config, step = _grid_outputs(0)
    nudged = fast + 0.4 * step  # no output half a step away, but every one off: a wrong op
    check = agreement(nudged, reference, config)
    assert check.share_apart == 0 and not check.passed
    assert agreement(fast + 1e-7, reference, config).passed  # float32 rounding passes


def test_without_an_adc_grid_the_largest_difference_counts():
    config = preset("ideal")
    reference = torch.linspace(-2, 2, 1000)
    assert agreement(reference + 1e-6, reference, config).passed
    check = agreement(reference + 1e-3, reference, config)
    assert not check.passed and check.share_apart is None and "no ADC grid" in check.rule


def test_bf16_outputs_are_allowed_their_rounding():
    fast, reference, config, _ = _grid_outputs(0)
    assert agreement(fast.bfloat16(), reference, config).passed
    assert "bfloat16 rounding" in agreement(fast.bfloat16(), reference, config).rule
