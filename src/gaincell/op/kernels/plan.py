"""The feature plan: what both fast forms need from a config, computed once per (config, gains) pair.

The cell polynomial's powers become :class:`Feature` s (one matmul each, stacked), and the plan fixes
how queries are blocked and how far apart the decay anchors lie. The split λ^(p·(t−n)) =
λ^(p·(t−a)) · λ^(p·(a−n)) is exact only while both factors are ordinary floats, so the anchor
spacing is chosen from ε (:func:`_blocking`); that choice is the op's whole numerical-range story.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from gaincell.chip.cells import build_cell
from gaincell.chip.config import GainCellConfig

#: Largest exponent |p·ε·age| a factor of the split decay may reach (see :func:`_blocking`):
#: e^±20 lies far inside float32's range, and the product of the two factors is exact to rounding.
_DECAY_EXPONENT_LIMIT = 20.0


@dataclass(frozen=True)
class Feature:
    """One matmul of the analog products: a polynomial φ of the stored offset, decaying as λ^(power·age).

    The score is S = Σ_f λ^(f.power·age) ∘ (Q · φ_f(k~)ᵀ) (+ the constant term), and likewise the
    second product. With leakage there is one feature per power of g; without, a single φ = g − g(0).
    """

    power: int
    coefficients: tuple[float, ...]

    def terms(self, slope: bool = False) -> list[tuple[int, float]]:
        """The (power, coefficient) pairs of φ, or of φ' with ``slope``, that are not zero."""
        terms = [(i, c) for i, c in enumerate(self.coefficients) if c]
        return [(i - 1, i * c) for i, c in terms if i] if slope else terms

    def scaled(self, y: torch.Tensor, scale: torch.Tensor, gain, out: torch.Tensor, slope: bool = False):
        """out = φ(y)·scale (· gain), or φ'(y)·scale (· gain); a single power is one pow and one multiply."""
        terms = self.terms(slope)
        if len(terms) == 1 and terms[0][0]:
            power, c = terms[0]
            torch.mul(y if power == 1 else y**power, c * scale, out=out)
        else:
            polynomial = torch.zeros_like(y)
            for power, c in terms:
                polynomial += c * y**power
            torch.mul(polynomial, scale, out=out)
        if gain is not None:
            out *= gain


@dataclass(frozen=True)
class Plan:
    """Everything the kernel needs from a config, computed once (configs are frozen and hashable).

    ``grad_features`` / ``grad_constant`` describe the model whose derivative the backward pass
    uses: the cell itself (exact) or the linear cell α·y (surrogate, SPEC §3.4). ``block``: queries
    per block (``block_size`` in whole chunks g, or fewer where ε needs it); ``anchor_span``: how many
    consecutive queries share one decay anchor (see :func:`_blocking`).
    """

    features: tuple[Feature, ...]
    constant: float
    grad_features: tuple[Feature, ...]
    grad_constant: float
    leakage: float
    window: int
    subtile_rows: int
    chunk: int
    n_subtiles: int
    block: int
    anchor_span: int
    s_sat: float
    readout_gain: float
    adc: object
    read_noise: float
    adc_high: float


def _features(coefficients: tuple[float, ...], leakage: float, with_gains: bool):
    """Group g's powers by their leakage exponent; the constant term rides along as a column of ones
    (first product) and a sum per chunk (second product) unless gains apply."""
    constant = 0.0 if with_gains else coefficients[0]
    start = 0 if with_gains else 1
    if leakage == 0:
        folded = (0.0,) * start + tuple(coefficients[start:])
        has_terms = any(c != 0 for c in folded)
        return ((Feature(0, folded),) if has_terms else ()), constant
    features = []
    for power in range(start, len(coefficients)):
        if coefficients[power] != 0:
            features.append(Feature(power, (0.0,) * power + (coefficients[power],)))
    return tuple(features), constant


def _blocking(features, leakage: float, window: int, block_size: int, chunk: int) -> tuple[int, int]:
    """Queries per block and per decay anchor a (the span, a whole number of blocks).

    Per anchor the stored side λ^(p·(a−n)) φ(y~) is built once for all its blocks instead of once
    per block; it covers the anchor's queries plus the window, so about one window M of queries
    share it and its memory stays O(M·D) per head. With leakage a shared anchor costs range: a
    query t in [a, a + span) carries λ^(p·(t−a)) ≥ e^(−p·ε·(span−1)) and a key it can see (n ≤ t)
    λ^(p·(a−n)) ≤ e^(p·ε·(span−1)) (keys newer than all of the anchor's queries are invisible and
    their age is clamped, so they grow no further). Hence p·ε·(span − 1) ≤ :data:`_DECAY_EXPONENT_LIMIT`:
    both factors stay normal floats and their product is exact to rounding; keys older than a only
    shrink, to 0 where their true charge is below float range anyway. With the paper's ε the
    default (one window) is far inside that; for ε ≳ 20/(p·block) the block itself shrinks to the
    span, down to one query per anchor (query factor 1, key factors ≤ 1: exact for any finite ε).
    """
    block = max(chunk, block_size // chunk * chunk)
    span = -(-window // block) * block
    power = max((f.power for f in features), default=0)
    if not leakage or power * leakage * (span - 1) <= _DECAY_EXPONENT_LIMIT:
        return block, span
    longest = int(_DECAY_EXPONENT_LIMIT / (power * leakage)) + 1  # < span here, so finite
    if longest < block:
        return longest, longest
    return block, longest // block * block


@functools.lru_cache(maxsize=64)
def make_plan(config: GainCellConfig, with_gains: bool) -> Plan:
    cell = build_cell(config.cell)
    features, constant = _features(cell.coefficients, config.leakage, with_gains)
    if config.gradient == "surrogate" and not cell.is_linear:
        grad_features, grad_constant = _features((0.0, cell.alpha), config.leakage, with_gains)
    else:
        grad_features, grad_constant = features, constant
    chunk = math.gcd(config.window, config.subtile_rows)
    block, anchor_span = _blocking(features + grad_features, config.leakage, config.window, config.block_size, chunk)
    return Plan(
        features=features,
        constant=constant,
        grad_features=grad_features,
        grad_constant=grad_constant,
        leakage=config.leakage,
        window=config.window,
        subtile_rows=config.subtile_rows,
        chunk=chunk,
        n_subtiles=config.n_subtiles,
        block=block,
        anchor_span=anchor_span,
        s_sat=config.periphery.s_sat,
        readout_gain=config.periphery.readout_gain,
        adc=config.periphery.adc,
        read_noise=config.noise.read_noise,
        adc_high=config.periphery.adc.high,
    )
