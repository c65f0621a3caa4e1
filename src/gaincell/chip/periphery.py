"""The circuits around the arrays: DACs, clamps, quantisers and ADCs (SPEC §3.2–3.3).

:mod:`gaincell.op.equations` uses these as they are; the fast kernels (:mod:`gaincell.op.kernels.primitives`)
fuse the charge-to-pulse converter and the ADC with the products around them, same formulas.

Forward passes round like the hardware; backward passes the gradient straight through the rounding
(STE) and stops it where the clamp saturates, as the paper's quantisation-aware training does.
"""

from __future__ import annotations

import torch

from gaincell.chip.config import QuantizerConfig


def quantize(x: torch.Tensor, quantizer: QuantizerConfig) -> torch.Tensor:
    """Clamp to [low, high], then round to the nearest level origin + k·step (SPEC §3.2: x_q =
    step · round(x / step) on the default ``zero`` grid); no gradient logic."""
    x = x.clamp(quantizer.low, quantizer.high)
    if quantizer.levels is None:
        return x
    step, origin = quantizer.step, quantizer.origin
    if origin == 0:
        return x.div_(step).round_().mul_(step)  # in place on the clamp's copy
    return x.sub_(origin).div_(step).round_().mul_(step).add_(origin)


def quantize_ste(x: torch.Tensor, quantizer: QuantizerConfig) -> torch.Tensor:
    """:func:`quantize` whose gradient is that of the clamp alone (straight-through rounding)."""
    if quantizer.levels is None:
        return x.clamp(quantizer.low, quantizer.high)
    return _StraightThrough.apply(x, quantizer)


class _StraightThrough(torch.autograd.Function):
    """Forward :func:`quantize`, backward the clamp's derivative: one pass each way instead of a graph
    of clamp, rounding and a detached correction (this runs on every q, k, v of every layer)."""

    @staticmethod
    def forward(ctx, x, quantizer):
        ctx.save_for_backward(x)
        ctx.quantizer = quantizer
        return quantize(x, quantizer)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * in_range(x, ctx.quantizer), None


def in_range(x: torch.Tensor, quantizer: QuantizerConfig) -> torch.Tensor:
    """Where the clamp passes its input through: the STE derivative of :func:`quantize` (0 or 1)."""
    return (x >= quantizer.low) & (x <= quantizer.high)


def charge_to_pulse(scores: torch.Tensor, s_sat: float) -> torch.Tensor:
    """φ(S) = clamp(S / S_sat, 0, 1): a column's charge becomes the pulse width driving the second
    array, a HardSigmoid in place of softmax (SPEC §1, §3.3)."""
    return (scores / s_sat).clamp(0.0, 1.0)


def adc(readout: torch.Tensor, quantizer: QuantizerConfig) -> torch.Tensor:
    """One sub-tile's ADC (SPEC §3.3): clamp to its range and quantise, straight-through gradient."""
    return quantize_ste(readout, quantizer)
