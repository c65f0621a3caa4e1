"""The gain-cell attention op (SPEC §3) on (B, H, T, D) tensors: the one function models call.

What it computes is written out equation by equation in :mod:`gaincell.op.equations`. This op takes
the front end and the output scaler from there and runs the analog core between them in a fast
form the dispatcher (:mod:`gaincell.op.kernels.dispatch`) picks: the banded form
(:mod:`gaincell.op.kernels.banded`: O(T·M·D) time, no T×T tensor; every device, every feature) or,
on CUDA, the fused Triton kernels (:mod:`gaincell.op.kernels.fused`); the tests hold both to the
equations.
"""

from __future__ import annotations

import torch

from gaincell.chip.cells import CellGains
from gaincell.chip.config import GainCellConfig
from gaincell.errors import GainCellError
from gaincell.op.equations import front_end
from gaincell.op.kernels.banded import banded_readout
from gaincell.op.kernels.dispatch import choose_kernel
from gaincell.op.kernels.fused import fused_readout
from gaincell.op.kernels.softmax import sliding_window_softmax
from gaincell.op.scalers import Scalers


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int | None = None) -> None:
    """Fail with the expected layout instead of letting a matmul broadcast wrong shapes."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise GainCellError(f"{name} must be a torch.Tensor of shape (batch, heads, seq, head_dim)")
        if x.dim() != 4:
            raise GainCellError(f"{name} must have shape (batch, heads, seq, head_dim), got {tuple(x.shape)} ({x.dim()}-D)")
        if not x.is_floating_point():
            raise GainCellError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if not (q.shape == k.shape == v.shape):
        raise GainCellError(
            "q, k, v must have the same shape (batch, heads, seq, head_dim), got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if n_heads is not None and q.shape[1] != n_heads:
        raise GainCellError(f"q has {q.shape[1]} heads in dim 1 but the scalers have {n_heads}")


def gain_cell_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scalers: Scalers | None,
    config: GainCellConfig,
    *,
    gains: CellGains | None = None,
    noise_seed: int | None = None,
    kernel: str | None = None,
) -> torch.Tensor:
    """Causal sliding-window attention of SPEC §3 on (B, H, T, D) tensors; returns (B, H, T, D).

    ``config.attention == "softmax"`` gives the software baseline (§3.1, scalers unused); otherwise
    the gain-cell model (§3.2–3.5) with ``config.cell`` (linear §3.3, paper polynomial §3.4, …).
    ``gains`` is a chip's cell variability; ``noise_seed`` fixes read noise (drawn from torch's
    RNG when None, so each call gets fresh noise reproducible under ``torch.manual_seed``).
    ``kernel``: ``auto`` | ``torch`` | ``triton`` (:mod:`gaincell.op.kernels.dispatch`; None: the process default).
    """
    check_qkv(q, k, v, None if scalers is None else scalers.n_heads)
    if config.attention == "softmax":
        return sliding_window_softmax(q, k, v, config.window, config.block_size)
    if scalers is None:
        raise GainCellError("scalers are required for gain-cell attention (use Scalers(n_heads))")
    dtype = q.dtype
    read_noise = config.noise.read_noise
    form = choose_kernel(kernel, q.device, gains=gains is not None, read_noise=read_noise, config=config, dtype=dtype)
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    pulses, keys, values = front_end(q.to(compute), k.to(compute), v.to(compute), scalers, config)
    if form == "triton":
        readout = fused_readout(pulses, keys, values, config)
    else:
        readout = banded_readout(pulses, keys, values, config, gains=gains, noise_seed=noise_seed)
    return scalers.apply("o", readout).to(dtype)
