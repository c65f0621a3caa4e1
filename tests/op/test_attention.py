"""The op against the dense SPEC reference (tests/reference.py, written from SPEC's text): both the
package's equations module and the fast banded kernel; gradients, noise, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from reference import reference_attention

from gaincell import CellGains, GainCellError, Scalers, gain_cell_attention, gain_cell_attention_equations, preset
from gaincell.chip.config import PRESETS

GEOMETRIES = [  # (T, window M, sub-tile rows R, block): T < M, T = M, T > M (wraps), odd T, M not multiple of R
    (37, 64, 16, 16),
    (64, 64, 16, 32),
    (157, 48, 16, 32),
    (131, 40, 16, 24),
]


def _inputs(batch, heads, length, dim, dtype, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    q = torch.rand(batch, heads, length, dim, generator=generator, dtype=dtype) * 1.1 - 0.05
    k = torch.rand(batch, heads, length, dim, generator=generator, dtype=dtype) - 0.5
    v = torch.rand(batch, heads, length, dim, generator=generator, dtype=dtype) - 0.5
    scalers = Scalers(heads).to(dtype)
    with torch.no_grad():
        for p in scalers.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator, dtype=dtype))
    return [x.requires_grad_(requires_grad) for x in (q, k, v)], scalers


def _relative_error(fast, ref):
    return ((fast - ref).abs().max() / ref.abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("leakage", [None, 0.0, 3e-3])
def test_fast_op_and_equations_equal_dense_reference_float32(name, geometry, leakage):
    length, window, rows, block = geometry
    config = preset(name, window=window, subtile_rows=rows, block_size=block)
    if leakage is not None and name != "softmax":
        config = config.replace(leakage=leakage)
    (q, k, v), scalers = _inputs(2, 3, length, 8, torch.float32)
    with torch.no_grad():
        fast = gain_cell_attention(q, k, v, scalers, config)
        equations = gain_cell_attention_equations(q, k, v, scalers, config)
        ref = reference_attention(q, k, v, scalers, config)
    assert fast.shape == equations.shape == q.shape
    assert _relative_error(fast, ref) <= 1e-5
    assert _relative_error(equations, ref) <= 1e-5


@pytest.mark.parametrize("name", ["linear", "paper", "ideal"])
def test_variability_matches_reference(name):
    config = preset(name, window=32, subtile_rows=16, block_size=16)
    config = config.replace(noise=dataclasses.replace(config.noise, variability=0.1, seed=3))
    gains = CellGains.sample(config, 3, 8, layer=2)
    (q, k, v), scalers = _inputs(2, 3, 75, 8, torch.float64)
    fast = gain_cell_attention(q, k, v, scalers, config, gains=gains)
    ref = reference_attention(q, k, v, scalers, config, gains=gains)
    assert _relative_error(fast, ref) <= 1e-12
    assert _relative_error(gain_cell_attention_equations(q, k, v, scalers, config, gains=gains), ref) <= 1e-12
    assert not torch.equal(fast, gain_cell_attention(q, k, v, scalers, config))


@pytest.mark.parametrize("name", ["linear", "paper", "ideal"])
@pytest.mark.parametrize("gradient", ["exact", "surrogate"])
def test_gradients_equal_reference_autograd(name, gradient):
    """Exact: the true derivative; surrogate: the linear product's derivative at the nonlinear forward."""
    config = preset(name, window=32, subtile_rows=16, block_size=16, gradient=gradient)
    (q, k, v), scalers = _inputs(2, 2, 70, 8, torch.float64, requires_grad=True)
    weight = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for op in (gain_cell_attention, gain_cell_attention_equations, reference_attention):
        leaves = [q, k, v, *scalers.parameters()]
        for x in leaves:
            x.grad = None
        (op(q, k, v, scalers, config) * weight).sum().backward()
        grads.append([x.grad.clone() for x in leaves])
    for fast, equations, ref in zip(*grads, strict=True):
        assert _relative_error(fast, ref) <= 1e-10
        assert _relative_error(equations, ref) <= 1e-10


def test_exact_gradient_passes_gradcheck():
    """Finite differences in float64 on the unquantised model (STE makes quantised grads non-smooth)."""
    config = preset("ideal", window=8, subtile_rows=4, block_size=4, gradient="exact", leakage=0.05)
    (q, k, v), scalers = _inputs(1, 2, 11, 3, torch.float64, requires_grad=True)
    q = (q * 0.5 + 0.2).detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: gain_cell_attention(a, b, c, scalers, config), (q, k, v))


def test_surrogate_gradient_is_the_linear_models_gradient():
    """With a linear cell, surrogate and exact coincide; with the paper cell the surrogate's gradient
    w.r.t. the pulses equals the linear model's analytic one where nothing saturates."""
    (q, k, v), scalers = _inputs(1, 2, 20, 4, torch.float64, requires_grad=True)
    linear = [preset("linear", window=16, subtile_rows=8, block_size=8, gradient=g) for g in ("exact", "surrogate")]
    grads = []
    for config in linear:
        q.grad = None
        gain_cell_attention(q, k, v, scalers, config).sum().backward()
        grads.append(q.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)

    # Analytic: ideal model, one query, no saturation: A = (1/40) Σ_n (S_n/80) g(v~_n), S_n = Σ_d Q_d g(k~_nd);
    # surrogate dA_d'/dQ_d = (1/40)(1/80) Σ_n α k~_nd · α v~_nd' (linear cell in both products).
    config = preset("ideal", window=16, subtile_rows=16, block_size=16, gradient="surrogate")
    scalers = Scalers(1).double()
    gen = torch.Generator().manual_seed(5)
    q = (torch.rand(1, 1, 6, 4, generator=gen, dtype=torch.float64) * 0.2).requires_grad_()
    k = torch.rand(1, 1, 6, 4, generator=gen, dtype=torch.float64) * 0.3
    v = torch.rand(1, 1, 6, 4, generator=gen, dtype=torch.float64) * 0.3 - 0.15
    out = gain_cell_attention(q, k, v, scalers, config)
    assert 0 < out.abs().max() < 1
    last = out[0, 0, -1]
    alpha = 19.3
    keys = k[0, 0] + scalers.b_k.detach() - 0.45  # stored offsets: scaler bias minus the cell offset
    values = v[0, 0] + scalers.b_v.detach() - 0.45
    analytic = (alpha * keys).T @ (alpha * values) / 40 / 80  # (D_q, D_out)
    for d_out in range(4):
        (grad,) = torch.autograd.grad(last[d_out], q, retain_graph=True)
        torch.testing.assert_close(grad[0, 0, -1], analytic[:, d_out], rtol=1e-10, atol=1e-12)


def test_read_noise_is_seeded_and_fresh():
    config = preset("paper", window=32, subtile_rows=16, block_size=16)
    config = config.replace(noise=dataclasses.replace(config.noise, read_noise=0.02))
    (q, k, v), scalers = _inputs(1, 2, 40, 8, torch.float32)
    a = gain_cell_attention(q, k, v, scalers, config, noise_seed=7)
    b = gain_cell_attention(q, k, v, scalers, config, noise_seed=7)
    assert torch.equal(a, b)
    torch.manual_seed(0)
    c = gain_cell_attention(q, k, v, scalers, config)
    d = gain_cell_attention(q, k, v, scalers, config)
    torch.manual_seed(0)
    assert torch.equal(c, gain_cell_attention(q, k, v, scalers, config))
    assert not torch.equal(c, d)
    clean = gain_cell_attention(q, k, v, scalers, config.replace(noise=dataclasses.replace(config.noise, read_noise=0)))
    assert not torch.equal(a, clean)


def test_noisy_backward_recomputes_the_same_noise():
    config = preset("ideal", window=16, subtile_rows=8, block_size=8, gradient="exact")
    config = config.replace(noise=dataclasses.replace(config.noise, read_noise=0.01))
    (q, k, v), scalers = _inputs(1, 1, 24, 4, torch.float64, requires_grad=True)
    q = (q * 0.5 + 0.2).detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: gain_cell_attention(a, b, c, scalers, config, noise_seed=11), (q, k, v))


@pytest.mark.parametrize(
    "shapes, message",
    [
        (((2, 3, 5), (2, 3, 5), (2, 3, 5)), "(batch, heads, seq, head_dim)"),
        (((1, 2, 5, 4), (1, 2, 6, 4), (1, 2, 5, 4)), "same shape"),
        (((1, 3, 5, 4), (1, 3, 5, 4), (1, 3, 5, 4)), "heads"),
    ],
)
def test_shape_errors_name_the_layout(shapes, message):
    q, k, v = (torch.rand(s) for s in shapes)
    with pytest.raises(GainCellError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gain_cell_attention(q, k, v, Scalers(2), preset("paper"))


def test_integer_inputs_are_rejected():
    x = torch.ones(1, 1, 4, 4, dtype=torch.long)
    with pytest.raises(GainCellError, match="floating-point"):
        gain_cell_attention(x, x, x, Scalers(1), preset("paper"))


def test_half_precision_inputs_compute_in_float32():
    (q, k, v), scalers = _inputs(1, 2, 40, 8, torch.float32)
    config = preset("paper", window=32, subtile_rows=16)
    out = gain_cell_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), scalers, config)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("kind", ["cubic", "quintic", "sigmoid", "exp"])
def test_alternative_cells_equal_spec_curves(kind):
    """The fast op with SPEC §3.4's alternative cells against the reference's own curves. y³ and y⁵
    are exact polynomials (full `paper` periphery); sigmoid and exp run through their degree-15 fit,
    so they are compared unquantised, where the fit error cannot move an ADC level."""
    exact = kind in ("cubic", "quintic")
    config = preset("paper" if exact else "ideal", window=32, subtile_rows=16, block_size=16, leakage=3e-3)
    config = config.replace(cell=dataclasses.replace(config.cell, kind=kind))
    (q, k, v), scalers = _inputs(2, 3, 75, 8, torch.float64)
    with torch.no_grad():
        fast = gain_cell_attention(q, k, v, scalers, config)
        ref = reference_attention(q, k, v, scalers, config)
    assert _relative_error(fast, ref) <= (1e-10 if exact else 1e-3)
