"""The digital normaliser: a named deviation from the paper's chip (``periphery.normaliser``, off by default).

The circuit: one more column per V sub-tile stores the constant c = kv.high − offset for every token
(rewritten with each token, so it leaks like the values). The same pulses φ(S_tn) drive it through the
same cells, so sub-tile s reads out gain·Σ_{n∈s} φ(S_tn)·g(λ^(t−n) c) (with the polynomial cell g of
SPEC §3.4; the surrogate gradient is the values' too). Its read-outs go through an ideal converter (no
clamp, no rounding: a modelling choice; ``gaincell hw`` costs them as ordinary ADC conversions) and
are summed digitally into den_t ≈ g(c)·Σ_n φ(S_tn); a digital divider gives read-out_t / den_t before
the output scaler: softmax's normalisation with φ in place of exp. SmolLM2-135M, layers 0/10/20
transferred: it removes 58 % of the chip's perplexity cost (docs/op.md).

Read noise and cell variability: the ones column is simulated as a copy of value column 0 with the
constant stored (in the fast forms it gets column 0's cell gains and noise draws, so the same
statistics as a separate column, but correlated with column 0 instead of independent).

Every form of the op calls :func:`divide`; the fast forms read the column with :func:`ones_column_plan`.
"""

from __future__ import annotations

import dataclasses

import torch

from gaincell.chip.config import GainCellConfig, QuantizerConfig

#: The ones column's converter: unclamped in practice (|den| ≤ M·max g·gain, far below 1e9) and unquantised.
IDEAL_CONVERTER = QuantizerConfig(-1e9, 1e9, None)

#: The divider's floor (den is in read-out units, as the ADC's input). den is 0 exactly when no pulse
#: reached the array (every S_tn ≤ 0); the values' read-out is then 0 too, and 0 / 1e-6 = 0 gives the
#: output scaler's offset b_o, as the chip without the normaliser does. Between 0 and 1e-6 every
#: sub-tile's read-out is below half an ADC step of any quantising ADC, so rounds to 0 and the floor
#: changes nothing; only an unquantised ADC (``ideal``) sees it, on queries that barely conduct.
MIN_DENOMINATOR = 1e-6


def ones_value(config: GainCellConfig) -> float:
    """The stored constant c = kv.high − offset: the DAC's top level, as every value is stored minus the offset."""
    return config.periphery.kv.high - config.periphery.offset


def ones_column_plan(plan):
    """A fast form's kernel plan (:class:`~gaincell.op.kernels.plan.Plan`) reading through the ideal
    converter; ``adc_high`` stays, so read noise keeps the real ADC's full scale."""
    return dataclasses.replace(plan, adc=IDEAL_CONVERTER)


def divide(readout: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """The digital divider: read-out (…, D) over the ones column's summed read-out (…, 1)."""
    return readout / denominator.clamp_min(MIN_DENOMINATOR)
