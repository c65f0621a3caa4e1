"""Gain-cell models: the charge a cell gives for a read pulse x on a stored offset voltage y~.

Every model here has the separable form  charge(x, y~) = x · g(y~)  (the pulse width multiplies
the cell current), and leakage scales the stored offset voltage, y~ → λ^age · y~ (SPEC §3.4). We
keep g as a polynomial g(y) = Σ_i β_i y^i because then the leaked score is a sum of ordinary
matmuls, Σ_i β_i λ^(i·age) (Q · (k~^i)ᵀ), and never needs a (T, M, D) tensor:

- ``linear``: β = (0, α), α = 19.3 (SPEC §3.3);
- ``polynomial``: the paper's fit, β_i = Σ_j c_ij V_in^j with V_in = 0.9 V (SPEC §3.4);
- ``cubic``, ``quintic``, ``sigmoid``, ``exp``: the paper's alternatives f = y³, y⁵, sigmoid(10y),
  exp(3y), used as g = c·(f(y~) − f(0)) with c = α / (f(0.45) − f(−0.45)) (SPEC §3.4): g(0) = 0 and
  g spans α over [−0.45, 0.45]. Sigmoid and exp are not polynomials, so they are represented by
  their least-squares polynomial of degree ``fit_degree`` on [−0.45, 0.45] (``fit_error`` records
  the worst deviation; ``exact`` keeps the true curve for reference).

New models plug in with :func:`register_cell`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gaincell.chip.config import GainCellConfig, add_cell_kind
from gaincell.errors import GainCellError

#: Offset-voltage range of a stored value: y~ = y − 0.45 with y in [0, 0.9] V (SPEC §3.2).
OFFSET_RANGE = 0.45


@dataclass(frozen=True)
class CellModel:
    """g(y~) = Σ_i coefficients[i] · y~^i; ``alpha`` is the slope of the linear surrogate gradient."""

    name: str
    coefficients: tuple[float, ...]
    alpha: float
    exact: Callable[[torch.Tensor], torch.Tensor] | None = None
    fit_error: float = 0.0

    @property
    def degree(self) -> int:
        return len(self.coefficients) - 1

    @property
    def is_linear(self) -> bool:
        """True when g is α·y, so the surrogate gradient *is* the exact gradient."""
        return self.degree == 1 and self.coefficients[0] == 0.0 and self.coefficients[1] == self.alpha

    def g(self, y: torch.Tensor) -> torch.Tensor:
        """The polynomial the simulator uses (Horner's rule)."""
        out = torch.full_like(y, self.coefficients[-1])
        for c in reversed(self.coefficients[:-1]):
            out = out * y + c
        return out

    def true_g(self, y: torch.Tensor) -> torch.Tensor:
        """The model's defining curve (equal to :meth:`g` for polynomial cells)."""
        return self.exact(y) if self.exact is not None else self.g(y)

    def charge(self, pulse: torch.Tensor, stored_offset: torch.Tensor) -> torch.Tensor:
        """Charge of one cell: pulse width × g(offset voltage)."""
        return pulse * self.g(stored_offset)


_REGISTRY: dict[str, Callable[[Any], CellModel]] = {}


def register_cell(kind: str, factory: Callable[[Any], CellModel]) -> None:
    """Make ``CellConfig(kind=...)`` valid and build ``factory(cell_config)``."""
    if not kind or not isinstance(kind, str):
        raise GainCellError(f"cell kind must be a non-empty string, got {kind!r}")
    add_cell_kind(kind)
    _REGISTRY[kind] = factory


def build_cell(cell_config: Any) -> CellModel:
    """The :class:`CellModel` described by a :class:`gaincell.chip.config.CellConfig`."""
    try:
        factory = _REGISTRY[cell_config.kind]
    except KeyError:
        raise GainCellError(f"cell.kind must be one of {', '.join(_REGISTRY)}, got {cell_config.kind!r}") from None
    return factory(cell_config)


def _linear(cfg: Any) -> CellModel:
    return CellModel("linear", (0.0, float(cfg.alpha)), float(cfg.alpha))


def _paper_polynomial(cfg: Any) -> CellModel:
    """β_i = Σ_j c_ij · V_in^j: the read voltage folds into one coefficient per power of y~."""
    degree = max(int(i) for i, _, _ in cfg.coefficients)
    betas = [0.0] * (degree + 1)
    for i, j, c in cfg.coefficients:
        betas[int(i)] += float(c) * float(cfg.read_voltage) ** int(j)
    return CellModel("polynomial", tuple(betas), float(cfg.alpha))


def _alternative(name: str, curve: Callable[[np.ndarray], np.ndarray], torch_curve) -> Callable[[Any], CellModel]:
    """SPEC §3.4's alternative cells: g(y~) = c·(f(y~) − f(0)), c = α / (f(0.45) − f(−0.45)).

    So g(0) = 0 (no charge from a cell at the offset voltage) and g spans exactly α over
    y~ ∈ [−0.45, 0.45], like the linear cell. Sigmoid and exp are not polynomials, so they are
    represented by their least-squares polynomial of degree ``fit_degree`` on that range
    (``fit_error`` is the worst deviation there; ``exact`` keeps the true curve). y³ and y⁵ are
    polynomials already (:func:`_power`).
    """

    def factory(cfg: Any) -> CellModel:
        h, alpha = OFFSET_RANGE, float(cfg.alpha)
        scale = alpha / float(curve(np.array(h)) - curve(np.array(-h)))
        at_zero = float(curve(np.array(0.0)))

        def rescaled(y):
            return scale * (curve(y) - at_zero)

        nodes = h * np.cos(np.linspace(0.0, math.pi, 4001))
        fit = np.polynomial.Polynomial.fit(nodes, rescaled(nodes), int(cfg.fit_degree)).convert()
        fit_error = float(np.abs(fit(nodes) - rescaled(nodes)).max())
        return CellModel(
            name,
            tuple(float(c) for c in fit.coef),
            alpha,
            exact=lambda y: scale * (torch_curve(y) - at_zero),
            fit_error=fit_error,
        )

    return factory


def _power(power: int) -> Callable[[Any], CellModel]:
    """y~^p as an alternative cell: exactly the polynomial c·y~^p, c = α / (2·0.45^p) (odd p)."""

    def factory(cfg: Any) -> CellModel:
        scale = float(cfg.alpha) / (2 * OFFSET_RANGE**power)
        return CellModel({3: "cubic", 5: "quintic"}[power], (0.0,) * power + (scale,), float(cfg.alpha))

    return factory


register_cell("linear", _linear)
register_cell("polynomial", _paper_polynomial)
register_cell("cubic", _power(3))
register_cell("quintic", _power(5))
register_cell("sigmoid", _alternative("sigmoid", lambda y: 1 / (1 + np.exp(-10 * y)), lambda y: torch.sigmoid(10 * y)))
register_cell("exp", _alternative("exp", lambda y: np.exp(3 * y), lambda y: torch.exp(3 * y)))


@dataclass(frozen=True)
class CellGains:
    """Per-cell gain factors of one simulated chip (SPEC §3.5 variability), (H, M, D) per array.

    Multiplies each cell's charge; indexed by physical slot n mod M, so a token written into a slot
    inherits that slot's cells. Fixed per chip: sample once per layer from a seed.
    """

    key: torch.Tensor
    value: torch.Tensor

    @classmethod
    def sample(cls, config: GainCellConfig, n_heads: int, head_dim: int, layer: int = 0, device=None) -> CellGains | None:
        """Gains 1 + σ·N(0, 1) from ``config.noise``; None when variability is off."""
        sigma = config.noise.variability
        if sigma == 0:
            return None
        generator = torch.Generator().manual_seed(config.noise.seed * 100_003 + layer)
        shape = (2, n_heads, config.window, head_dim)
        gains = 1 + sigma * torch.randn(shape, generator=generator, dtype=torch.float64)
        gains = gains.to(device=device, dtype=torch.float32)
        return cls(gains[0], gains[1])

    def at_positions(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gains of the cells that hold tokens at ``positions`` (slot = position mod M): (H, T, D)."""
        slots = positions % self.key.shape[1]
        return self.key[:, slots], self.value[:, slots]
