"""Generation with a bf16/fp16 model: the memory simulates the chip in float32, as the parallel op does,
so the step path gives the parallel op's outputs (it quantised bf16 values in bf16 arithmetic before,
and 30-45 % of outputs of a 200-token run were half an ADC step or more from the parallel op)."""

import pytest
import torch

from gaincell import GainCellMemory, Scalers, gain_cell_attention, preset


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["paper", "linear"])
def test_half_precision_steps_equal_the_parallel_op(name, dtype):
    config = preset(name, window=32, subtile_rows=16, block_size=16)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.rand(1, 2, 70, 16, generator=generator).to(dtype) - 0.25 for _ in range(3))
    scalers = Scalers(2)
    with torch.no_grad():
        parallel = gain_cell_attention(q, k, v, scalers, config)
        memory = GainCellMemory(config, scalers, 1, 2, 16, dtype=torch.float32)
        prompt = memory.prefill(q[:, :, :20], k[:, :, :20], v[:, :, :20])
        steps = [memory.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1]) for t in range(20, 70)]
    generated = torch.cat([prompt, *steps], dim=2)
    assert generated.dtype == dtype
    assert torch.equal(generated, parallel)
