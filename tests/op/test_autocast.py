"""Under ``torch.autocast`` (accelerate's bf16 mixed precision) the analog core still computes in
float32: outputs and gradients equal those of a float32 run, bit for bit. Without autocast guards a
backward inside autocast ran one matmul in bf16 (0.3 % gradient difference). CPU autocast stands in
for the GPU's: the same dispatch decides which ops drop to bf16."""

import pytest
import torch

from gaincell import Scalers, gain_cell_attention, preset


def _run(config, autocast: bool):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.rand(1, 2, 150, 16, generator=generator).requires_grad_() for _ in range(3))
    weight = torch.randn(1, 2, 150, 16, generator=generator)
    scalers = Scalers(2)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = gain_cell_attention(q, k, v, scalers, config)
        (out * weight).sum().backward()
    return [out.detach(), *(x.grad for x in (q, k, v)), *(p.grad for p in scalers.parameters())]


@pytest.mark.parametrize(("name", "gradient"), [("paper", "surrogate"), ("paper", "exact"), ("linear", "exact")])
def test_outputs_and_gradients_under_bf16_autocast_equal_float32(name, gradient):
    config = preset(name, window=64, subtile_rows=16, block_size=32, leakage=1e-3, gradient=gradient)
    plain, autocast = _run(config, False), _run(config, True)
    for index, (a, b) in enumerate(zip(plain, autocast, strict=True)):
        assert a.dtype == b.dtype == torch.float32
        assert torch.equal(a, b), f"tensor {index}: max difference {(a - b).abs().max().item():.3g}"
