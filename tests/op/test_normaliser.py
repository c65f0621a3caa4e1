"""The digital normaliser option (``periphery.normaliser``): the three forms of the op against the text.

The text (issue 24, docs/op.md): one extra column per V sub-tile stores c = kv.high − offset for every
token and is read by the same pulses through the same cells and leakage; its read-outs, summed over
the sub-tiles with an ideal (unclamped, unquantised) converter, give den_t; the output is
a_o · read-out_t / max(den_t, 1e-6) + b_o (den_t = 0 when no pulse reached the array, and then the
read-out is 0 too: the floor makes 0/0 the output scaler's offset). The reference below builds that
from the dense SPEC reference of tests/reference.py: the read-out with an identity output scaler, and
den as the read-out of a V array whose every stored value is c (v far above the DAC's range, so
clamped to kv.high), through a converter without clamp or levels.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from reference import reference_attention

from gaincell import CellGains, GainCellError, GainCellMemory, Scalers, gain_cell_attention, gain_cell_attention_equations
from gaincell.chip.config import GainCellConfig, QuantizerConfig, preset
from gaincell.op.kernels import dispatch

GEOMETRIES = [(37, 64, 16, 16), (157, 48, 16, 32), (131, 40, 16, 24)]  # (T, M, R, block): T < M, wraps, M % R ≠ 0


def _normalised(config: GainCellConfig) -> GainCellConfig:
    return config.replace(periphery=dataclasses.replace(config.periphery, normaliser=True))


def _inputs(length, dtype, heads=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.rand(2, heads, length, 8, generator=generator, dtype=dtype) * 1.1 - 0.05
    k = torch.rand(2, heads, length, 8, generator=generator, dtype=dtype) - 0.5
    v = torch.rand(2, heads, length, 8, generator=generator, dtype=dtype) - 0.5
    scalers = Scalers(heads).to(dtype)
    with torch.no_grad():
        for p in scalers.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator, dtype=dtype))
    return (q, k, v), scalers


def text_reference(q, k, v, scalers, config: GainCellConfig, gains=None):
    """a_o · read-out / den + b_o, den = Σ over sub-tiles of the ones column's ideal read-out."""
    plain = config.replace(periphery=dataclasses.replace(config.periphery, normaliser=False))
    identity = Scalers(scalers.n_heads).to(q.dtype)
    with torch.no_grad():
        for name in ("q", "k", "v"):
            getattr(identity, f"a_{name}").copy_(getattr(scalers, f"a_{name}"))
            getattr(identity, f"b_{name}").copy_(getattr(scalers, f"b_{name}"))
    readout = reference_attention(q, k, v, identity, plain, gains=gains)  # a_o = 1, b_o = 0
    ideal = plain.replace(periphery=dataclasses.replace(plain.periphery, adc=QuantizerConfig(-1e9, 1e9, None)))
    saturating = torch.full_like(v, 1e3)  # a_v · v + b_v ≫ kv.high: every stored value is kv.high − offset
    den = reference_attention(q, k, saturating, identity, ideal, gains=gains)[..., :1]
    a_o, b_o = scalers.a_o[:, None, None], scalers.b_o[:, None, None]
    return a_o * readout / den.clamp_min(1e-6) + b_o


def _relative_error(fast, ref):
    return ((fast - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("name", ["linear", "paper", "ideal"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("leakage", [0.0, 3e-3])
def test_banded_and_equations_equal_the_text(name, geometry, leakage):
    length, window, rows, block = geometry
    config = _normalised(preset(name, window=window, subtile_rows=rows, block_size=block, leakage=leakage))
    (q, k, v), scalers = _inputs(length, torch.float64)
    with torch.no_grad():
        fast = gain_cell_attention(q, k, v, scalers, config)
        equations = gain_cell_attention_equations(q, k, v, scalers, config)
        ref = text_reference(q, k, v, scalers, config)
        plain = gain_cell_attention(q, k, v, scalers, preset(name, window=window, subtile_rows=rows, leakage=leakage))
    assert _relative_error(fast, ref) <= 1e-10
    assert _relative_error(equations, ref) <= 1e-10
    assert _relative_error(plain, ref) > 1e-3  # the option changes the outputs


@pytest.mark.parametrize("name", ["linear", "paper", "ideal"])
def test_banded_equals_equations_float32(name):
    """The rule of the existing banded tests (tests/op/test_attention.py): relative 1e-5 in float32."""
    config = _normalised(preset(name, window=48, subtile_rows=16, block_size=32))
    (q, k, v), scalers = _inputs(157, torch.float32)
    with torch.no_grad():
        fast = gain_cell_attention(q, k, v, scalers, config)
        equations = gain_cell_attention_equations(q, k, v, scalers, config)
    assert _relative_error(fast, equations) <= 1e-5


def test_variability_gives_the_ones_column_value_column_0s_gains():
    config = _normalised(preset("paper", window=32, subtile_rows=16, block_size=16))
    config = config.replace(noise=dataclasses.replace(config.noise, variability=0.1, seed=3))
    gains = CellGains.sample(config, 3, 8, layer=1)
    (q, k, v), scalers = _inputs(75, torch.float64)
    with torch.no_grad():
        fast = gain_cell_attention(q, k, v, scalers, config, gains=gains)
        ref = text_reference(q, k, v, scalers, config, gains=gains)
        equations = gain_cell_attention_equations(q, k, v, scalers, config, gains=gains)
    assert _relative_error(fast, ref) <= 1e-10
    assert _relative_error(equations, ref) <= 1e-10


def test_gradients_equal_the_equations():
    config = _normalised(preset("paper", window=32, subtile_rows=16, block_size=16))
    (q, k, v), scalers = _inputs(70, torch.float64)
    leaves = [x.requires_grad_(True) for x in (q, k, v)]
    weight = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for op in (gain_cell_attention, gain_cell_attention_equations):
        (op(q, k, v, scalers, config) * weight).sum().backward()
        grads.append([x.grad.clone() for x in [*leaves, *scalers.parameters()]])
        for x in [*leaves, *scalers.parameters()]:
            x.grad = None
    for fast, equations in zip(*grads, strict=True):
        torch.testing.assert_close(fast, equations, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["linear", "paper", "ideal"])
@pytest.mark.parametrize("prompt", [0, 7])
def test_steps_equal_parallel(name, prompt):
    config = _normalised(preset(name, window=32, subtile_rows=16, block_size=16))
    (q, k, v), scalers = _inputs(150, torch.float64)
    with torch.no_grad():
        parallel = gain_cell_attention(q, k, v, scalers, config)
    memory = GainCellMemory(config, scalers, 2, 3, 8, dtype=torch.float64)
    outputs = [memory.prefill(q[:, :, :prompt], k[:, :, :prompt], v[:, :, :prompt])] if prompt else []
    outputs += [memory.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1]) for t in range(prompt, 150)]
    torch.testing.assert_close(torch.cat(outputs, 2), parallel, rtol=1e-10, atol=1e-12)


def test_steps_equal_parallel_with_variability():
    config = _normalised(preset("paper", window=40, subtile_rows=16, block_size=24))
    config = config.replace(noise=dataclasses.replace(config.noise, variability=0.1))
    gains = CellGains.sample(config, 3, 8)
    (q, k, v), scalers = _inputs(101, torch.float64)
    with torch.no_grad():
        parallel = gain_cell_attention(q, k, v, scalers, config, gains=gains)
    memory = GainCellMemory(config, scalers, 2, 3, 8, gains=gains, dtype=torch.float64)
    stepped = torch.cat([memory.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1]) for t in range(101)], 2)
    torch.testing.assert_close(stepped, parallel, rtol=1e-10, atol=1e-12)


def test_read_noise_draws_the_same_scores_for_the_ones_column():
    """With a fixed seed the two passes see the same S: with noise only on S (none on a read-out that the
    ADC's wide range leaves unrounded), den is then exactly the noiseless formula applied to the noisy φ."""
    config = _normalised(preset("paper", window=32, subtile_rows=16, block_size=16))
    noisy = config.replace(noise=dataclasses.replace(config.noise, read_noise=0.02))
    (q, k, v), scalers = _inputs(60, torch.float64)
    with torch.no_grad():
        first = gain_cell_attention(q, k, v, scalers, noisy, noise_seed=5)
        again = gain_cell_attention(q, k, v, scalers, noisy, noise_seed=5)
        quiet = gain_cell_attention(q, k, v, scalers, config)
    assert torch.equal(first, again) and not torch.equal(first, quiet)
    assert torch.isfinite(first).all()


def test_the_fused_kernel_refuses_and_auto_falls_back(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # past the device check, to the config's
    config = _normalised(preset("paper", window=16, subtile_rows=8))
    why = dispatch.triton_unsupported(torch.device("cpu"), gains=False, read_noise=0.0, config=config)
    assert why is not None and "normaliser" in why
    with pytest.raises(GainCellError, match="normaliser"):
        dispatch.choose_kernel("triton", torch.device("cpu"), gains=False, read_noise=0.0, config=config)


def test_config_field_is_validated_saved_and_off_in_every_preset():
    from gaincell.chip.config import PRESETS, PeripheryConfig

    assert not any(preset(name).periphery.normaliser for name in PRESETS)
    with pytest.raises(GainCellError, match="periphery.normaliser"):
        PeripheryConfig(normaliser="yes").validate()
    with pytest.raises(GainCellError, match="periphery.normaliser"):
        GainCellConfig.from_dict({"periphery": {"normaliser": 1}})
    on = _normalised(preset("paper"))
    assert GainCellConfig.from_json(on.to_json()) == on
    saved_before = preset("paper").to_dict()
    del saved_before["periphery"]["normaliser"]  # a config saved before the option existed
    assert GainCellConfig.from_dict(saved_before) == preset("paper")
