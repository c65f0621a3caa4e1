"""How close a fast form of the op must come to :mod:`gaincell.op.equations`: the rule ``selfcheck`` prints.

The ADC rounds (SPEC §3.3): a float difference of 1e-6 in a sub-tile's read-out can move an output
by one whole ADC step when the read-out sits on a rounding boundary, and two correct programs that sum
in different orders meet such boundaries in different places. So an op with an ADC grid is held to
its share of outputs at least half a step from the reference (at most :data:`MAX_SHARE_APART`, 0.1 %)
and to its mean difference, which those few steps bound (at most ``MAX_SHARE_APART`` steps, plus the
output dtype's rounding of the values). Without a grid (``ideal``, ``softmax``) there is nothing to
round, and the largest difference is held to float precision, as the tests do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gaincell.chip.config import GainCellConfig

#: The largest share of outputs allowed at least half an ADC step from the reference.
MAX_SHARE_APART = 1e-3
#: Largest |difference| / max |reference| without an ADC grid, in float32 (the op tests' bound).
FLOAT32_RELATIVE = 1e-5


@dataclass(frozen=True)
class Agreement:
    """One comparison: the measured numbers, the bounds they were held to, and whether they hold."""

    mean_difference: float
    max_difference: float
    share_apart: float | None  # outputs at least half an ADC step apart (None: no ADC grid)
    step: float | None
    passed: bool
    rule: str

    def summary(self) -> str:
        if self.step is None:
            return f"max |diff| {self.max_difference:.2e}"
        return f"mean |diff| {self.mean_difference / self.step:.2e} steps, {100 * self.share_apart:.3f} % ≥ ½ step"


def _rounding(dtype: torch.dtype) -> float:
    """The unit roundoff of the dtype an output is returned in."""
    return torch.finfo(dtype).eps / 2


def agreement(fast: torch.Tensor, reference: torch.Tensor, config: GainCellConfig, output_scale: float = 1.0) -> Agreement:
    """Hold ``fast`` (any float dtype) to ``reference`` (float32 or float64) by the rule above.

    ``output_scale`` is the output scaler's |a_o| (1 for fresh :class:`~gaincell.op.scalers.Scalers`): one
    ADC step in the output is ``output_scale`` × the ADC's step.
    """
    difference = (fast.to(reference.dtype) - reference).abs()
    mean, largest = difference.mean().item(), difference.max().item()
    rounding = _rounding(fast.dtype)
    adc = None if config.attention == "softmax" else config.periphery.adc
    if adc is None or adc.levels is None:
        relative = max(FLOAT32_RELATIVE, 4 * rounding)
        rule = f"no ADC grid: max |diff| ≤ {relative:.0e} × max |reference|"
        return Agreement(mean, largest, None, None, largest <= relative * reference.abs().max().item(), rule)
    step = adc.step * output_scale
    share = (difference >= step / 2).double().mean().item()
    mean_bound = MAX_SHARE_APART * step + rounding * reference.abs().mean().item()
    passed = share <= MAX_SHARE_APART and mean <= mean_bound
    rule = (
        f"ADC grid: ≤ {100 * MAX_SHARE_APART:g} % of outputs ≥ ½ step apart, mean |diff| ≤ {MAX_SHARE_APART:g} step "
        f"+ {rounding:.1e} × mean |reference| ({str(fast.dtype).removeprefix('torch.')} rounding)"
    )
    return Agreement(mean, largest, share, step, passed, rule)
