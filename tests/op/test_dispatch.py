"""Kernel choice: one setting, clear errors, the banded form wherever the fused kernel cannot run."""

from __future__ import annotations

import pytest
import torch

from gaincell import GainCellError, Scalers, gain_cell_attention, preset
from gaincell.op.kernels import dispatch


def test_unknown_kernel_is_one_clear_error():
    q = torch.rand(1, 2, 8, 4)
    with pytest.raises(GainCellError, match="kernel must be one of auto, torch, triton"):
        gain_cell_attention(q, q, q, Scalers(2), preset("paper", window=8), kernel="cuda")
    with pytest.raises(GainCellError, match="kernel must be one of"):
        dispatch.set_kernel("fast")


def test_auto_and_torch_agree_on_cpu():
    q, k, v = torch.rand(3, 1, 2, 20, 4).unbind(0)
    config = preset("paper", window=16, subtile_rows=8)
    scalers = Scalers(2)
    auto = gain_cell_attention(q, k, v, scalers, config, kernel="auto")
    banded = gain_cell_attention(q, k, v, scalers, config, kernel="torch")
    assert torch.equal(auto, banded)
    assert dispatch.choose_kernel("auto", q.device, gains=False, read_noise=0.0) == "torch"


def test_the_fused_precision_is_set_for_a_block_and_restored():
    from gaincell.op.kernels import fused

    before = fused._precision
    with fused.precision("tf32x3"):
        assert fused._precision == "tf32x3"
    assert fused._precision == before
    with pytest.raises(GainCellError, match="precision must be auto or one of ieee, tf32, tf32x3, fp16, bf16"):
        with fused.precision("fp8"):
            pass
