"""The op's three forms agree, and stay finite, over the whole valid leakage range (SPEC §3.3–3.6).

The fast forms split each decay at an anchor, λ^(p(t−n)) = λ^(p(t−a)) · λ^(p(a−n)); with a large ε
a badly spaced anchor overflows one factor and the product turns NaN (block 128 gave NaN from
ε ≈ 0.25 on). Random configs (ε log-uniform from 0 to MAX_LEAKAGE, geometry, quantisers, noise,
variability, both presets, T below and above M) hold the banded kernel and the generation memory
to the equations in float64, values and (for a subset) gradients, and check float32 for NaN/inf.
"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from gaincell import CellGains, GainCellError, GainCellMemory, Scalers, gain_cell_attention, preset
from gaincell.chip.config import MAX_LEAKAGE, GainCellConfig, QuantizerConfig
from gaincell.op.equations import gain_cell_attention_equations

CASES = 60  # random configs; each: banded, memory and equations in float64 and float32
GRADIENT_EVERY = 3  # every third noise-free case also compares gradients


def _leakage(rng: random.Random, index: int) -> float:
    """Both ends of the valid range, then log-uniform in between (10^-6 to MAX_LEAKAGE)."""
    if index < 2:
        return (0.0, MAX_LEAKAGE)[index]
    return math.exp(rng.uniform(math.log(1e-6), math.log(MAX_LEAKAGE)))


def _random_config(rng: random.Random, index: int, gradients: bool) -> GainCellConfig:
    """A random chip. With ``gradients`` the DAC and k/v quantisers are off: quantised inputs can
    cancel exactly (S = 0, the converter's edge), where either rounding is right and STE masks differ."""
    window = rng.randint(2, 32)
    config = preset(
        rng.choice(["paper", "linear"]),
        window=window,
        subtile_rows=rng.choice([1, rng.randint(2, window), -(-window // 2), window]),
        block_size=rng.choice([1, rng.randint(1, 48), 128]),
        leakage=_leakage(rng, index),
        gradient=rng.choice(["surrogate", "exact"]),
    )
    periphery = dataclasses.replace(
        config.periphery,
        q=QuantizerConfig(0.0, 1.0, None if gradients else rng.choice([None, 8, 16, 32])),
        kv=QuantizerConfig(0.0, 0.9, None if gradients else rng.choice([None, 8, 16])),
        adc=QuantizerConfig(-1.0, 1.0, rng.choice([None, 16, 32, 64]), rng.choice(["zero", "ends"])),
    )
    noise = dataclasses.replace(
        config.noise,
        read_noise=rng.choice([0.0, 0.0, 0.0, 0.02]),
        variability=rng.choice([0.0, 0.0, 0.1]),
        seed=rng.randint(0, 1000),
    )
    return config.replace(periphery=periphery, noise=noise)


def _length(rng: random.Random, window: int, index: int) -> int:
    """Alternately within the window (T ≤ M) and past it (wrap-arounds of the circular array)."""
    return rng.randint(1, window) if index % 2 else rng.randint(window + 1, 3 * window + 5)


def _inputs(length: int, dtype, seed: int):
    generator = torch.Generator().manual_seed(seed)
    q = torch.rand(1, 2, length, 6, generator=generator, dtype=dtype) * 1.1 - 0.05
    k = torch.rand(1, 2, length, 6, generator=generator, dtype=dtype) - 0.5
    v = torch.rand(1, 2, length, 6, generator=generator, dtype=dtype) - 0.5
    scalers = Scalers(2).to(dtype)
    with torch.no_grad():
        for p in scalers.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator, dtype=dtype))
    return q, k, v, scalers


def _generate(config, scalers, gains, q, k, v, prompt: int) -> torch.Tensor:
    """A prompt through prefill, then one step per token: what generation computes."""
    memory = GainCellMemory(config, scalers, 1, 2, q.shape[-1], gains=gains, dtype=q.dtype)
    outputs = [memory.prefill(q[:, :, :prompt], k[:, :, :prompt], v[:, :, :prompt])] if prompt else []
    outputs += [memory.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1]) for t in range(prompt, q.shape[2])]
    return torch.cat(outputs, dim=2)


def _assert_close(fast: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    scale = max(1.0, reference.abs().max().item())
    error = (fast - reference).abs().max().item()
    assert error <= 1e-9 * scale, f"{what}: max |difference| {error:.3g} (scale {scale:.3g})"


def _assert_finite(*tensors: torch.Tensor, what: str) -> None:
    for x in tensors:
        assert torch.isfinite(x).all(), f"{what}: {(~torch.isfinite(x)).sum().item()} NaN/inf values"


def _gradients(op, q, k, v, scalers, config, gains, weight):
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    out = op(*leaves, scalers, config, gains=gains)
    return torch.autograd.grad((out * weight).sum(), leaves + list(scalers.parameters()))


def _check_float64(config, gains, length: int, prompt: int, seed: int, gradients: bool) -> None:
    """Noise-free: banded = memory = equations (values, and gradients when asked)."""
    q, k, v, scalers = _inputs(length, torch.float64, seed)
    with torch.no_grad():
        equations = gain_cell_attention_equations(q, k, v, scalers, config, gains=gains)
        banded = gain_cell_attention(q, k, v, scalers, config, gains=gains)
    _assert_finite(equations, what="equations")
    _assert_close(banded, equations, "banded vs equations")
    _assert_close(_generate(config, scalers, gains, q, k, v, prompt), equations, "memory vs equations")
    if gradients:
        weight = torch.randn(q.shape, dtype=q.dtype, generator=torch.Generator().manual_seed(seed))
        got = _gradients(gain_cell_attention, q, k, v, scalers, config, gains, weight)
        expected = _gradients(gain_cell_attention_equations, q, k, v, scalers, config, gains, weight)
        for fast, reference in zip(got, expected, strict=True):
            _assert_close(fast, reference, "banded gradient vs equations")


def _check_float32_finite(config, gains, length: int, prompt: int, seed: int) -> None:
    """float32 (the models' dtype), read noise included: no NaN or inf from finite inputs."""
    q, k, v, scalers = _inputs(length, torch.float32, seed)
    weight = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed))
    for op in (gain_cell_attention, gain_cell_attention_equations):
        _assert_finite(*_gradients(op, q, k, v, scalers, config, gains, weight), what=f"{op.__name__} gradients")
    with torch.no_grad():
        _assert_finite(gain_cell_attention(q, k, v, scalers, config, gains=gains), what="banded")
        _assert_finite(_generate(config, scalers, gains, q, k, v, prompt), what="memory")


@pytest.mark.parametrize("index", range(CASES))
def test_banded_memory_and_equations_agree_over_random_configs(index):
    rng = random.Random(1000 + index)
    gradients = index % GRADIENT_EVERY == 0
    config = _random_config(rng, index, gradients)
    length = _length(rng, config.window, index)
    prompt = rng.randint(0, length - 1)
    gains = CellGains.sample(config, 2, 6, layer=index)
    if config.noise.read_noise == 0:
        _check_float64(config, gains, length, prompt, index, gradients)
    else:  # noise is drawn differently by each form: reproducible from its seed, and finite
        q, k, v, scalers = _inputs(length, torch.float64, index)
        with torch.no_grad():
            first, again = (gain_cell_attention(q, k, v, scalers, config, gains=gains, noise_seed=index) for _ in range(2))
        assert torch.equal(first, again)
    _check_float32_finite(config, gains, length, prompt, index)


@pytest.mark.parametrize("leakage", [0.25, 0.5, 1.0])
def test_reported_leakages_give_no_nan(leakage):
    """The reported case: paper preset, block 128, window 64, T = 200 (NaN from ε ≈ 0.25 before)."""
    config = preset("paper", leakage=leakage, window=64, block_size=128)
    q, k, v, scalers = _inputs(200, torch.float32, 0)
    with torch.no_grad():
        equations = gain_cell_attention_equations(q, k, v, scalers, config)
        banded = gain_cell_attention(q, k, v, scalers, config)
        generated = _generate(config, scalers, None, q, k, v, prompt=10)
    _assert_finite(banded, generated, what=f"ε = {leakage}")
    torch.testing.assert_close(banded, equations, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(generated, equations, rtol=1e-5, atol=1e-6)
    weight = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    _assert_finite(*_gradients(gain_cell_attention, q, k, v, scalers, config, None, weight), what="gradients")


@pytest.mark.parametrize("leakage", [-1e-3, math.nan, math.inf, MAX_LEAKAGE * 1.001, 50.0])
def test_leakage_outside_the_valid_range_is_refused_naming_the_field(leakage):
    with pytest.raises(GainCellError, match=r"^leakage must be a number in \[0, 16\.6355\].*, got"):
        preset("paper", leakage=leakage)
