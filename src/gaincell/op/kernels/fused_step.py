"""The fused kernels in a generation step: a memory's step on a GPU in two Triton launches.

:class:`~gaincell.op.memory.GainCellMemory` calls these where the dispatcher picks the fused kernels. A
decode step on a GPU is bound by how many operations it launches (the H200 runs: the torch step's ~100 per
layer, 19 ms a token at batch 1 and 64 alike), so the step's front end and the write into slot t mod M are
one launch (``step_front_end_kernel``), and the read of every slot is the v2 forward kernel in its one-query
``RING`` form, one more. The kernels' source is :mod:`~gaincell.op.kernels.fused_kernels_v2`.
"""

from __future__ import annotations

import functools

import torch

from gaincell.chip.config import GainCellConfig
from gaincell.errors import GainCellError
from gaincell.op.kernels import fused

#: The query tile of a generation step: one query, in the smallest tile a dot takes.
STEP_QUERIES = 16


def fused_step_readout(pulses, keys, values, position: int, config: GainCellConfig, precision: str | None = None):
    """One generation step's digital sum in one launch: the pulses (B, H, 1, D) of the token at ``position``
    against a memory's slots of k~ and v~ (B, H, M, D, position n in slot n mod M, every position from
    max(0, position − M + 1) to ``position`` written), as :func:`fused_readout` computes it at that position
    (the v2 forward kernel in its one-query ``RING`` form; the same band, sub-tiles, decay and ADCs). No
    gradient: generation needs none. :class:`~gaincell.op.memory.GainCellMemory` calls it where the
    dispatcher picks the fused kernels, in place of the torch step's ~100 tensor operations per layer."""
    why = fused.unsupported(config)
    if why is not None:
        raise GainCellError(f"kernel='triton' cannot run: {why}")
    precision = fused._check_precision(fused._precision if precision is None else precision, "$GAINCELL_TRITON_PRECISION")
    precision = fused.resolve_precision(precision, pulses.device)
    batch, heads, _, dim = pulses.shape
    plan = fused.make_fused_plan(config)
    blocks = fused.block_sizes(plan, dim, pulses.device.type != "cuda", precision, "forward", "v2") | {"BT": STEP_QUERIES}
    structure = plan.constexprs("v2", max(STEP_QUERIES, blocks["BN"]))
    bh, window = batch * heads, plan.window
    flat = [x.reshape(bh, -1, dim) for x in (pulses, keys, values)]
    out = torch.empty(bh, 1, dim, dtype=torch.float32, device=pulses.device)
    geometry = (position + 1, dim, window, plan.subtile_rows, plan.n_subtiles, fused._chunks_per_subtile(plan, blocks))
    with fused._on(pulses.device):
        fused.kernels("v2").forward_kernel[(1, bh)](
            *flat, out, _no_passes(pulses.device), fused._coefficients(plan.coefficients, pulses.device),
            *geometry, position, 1, window,
            plan.leakage, plan.s_sat, plan.read_scale, plan.adc_low, plan.adc_high, plan.adc_step or 1.0,
            plan.adc_origin,
            POWERS=structure["POWERS"], NP=structure["NP"], CONST=structure["CONST"], LEAK=structure["LEAK"],
            QUANT=plan.adc_step is not None, SAVE=False, DOT=precision, RING=True, **blocks,
        )  # fmt: skip
    return out.view(batch, heads, 1, dim)


def fused_step_front_end(q, k, v, a, b, keys, values, slot: int, config: GainCellConfig) -> torch.Tensor:
    """A generation step's front end in one launch: the raw projections q, k, v (B, H, 1, D, any float dtype)
    through their scalers (``a``, ``b``: (4, H, ...) in q, k, v, o order, float32, as
    :func:`~gaincell.op.kernels.step.stacked_scalers` stacks them) and quantisers; returns the pulses
    (B, H, 1, D, float32) and writes k~ and v~ into ``slot`` of ``keys`` and ``values`` (B, H, M, D, float32).
    :func:`~gaincell.op.kernels.step.encode` and the write, for quantisers on SPEC's zero-origin grid (the
    caller checks: :func:`~gaincell.op.kernels.step.quantizer_grid` is not None)."""
    batch, heads, _, dim = q.shape
    periphery = config.periphery
    pulses = torch.empty(batch, heads, 1, dim, dtype=torch.float32, device=q.device)
    raw = [x if x.is_contiguous() else x.contiguous() for x in (q, k, v)]
    with fused._on(q.device):
        fused.kernels("v2").step_front_end_kernel[(batch * heads,)](
            *raw, a, b, pulses, keys, values, slot, heads, dim, keys.shape[2],
            periphery.q.low, periphery.q.high, periphery.q.step, periphery.kv.low, periphery.kv.high,
            periphery.kv.step, periphery.offset, BD=fused._pow2(dim),
        )  # fmt: skip
    return pulses


@functools.lru_cache(maxsize=8)
def _no_passes(device: torch.device) -> torch.Tensor:
    """The pass-mask argument of a launch that saves none (never read or written)."""
    return torch.zeros(1, dtype=torch.int32, device=device)
