"""The banded parallel form of the analog core (SPEC §3.3–3.5), for (BH, T, D) tensors: training and prefill.

:mod:`gaincell.op.equations` says what is computed; this module computes the same numbers fast from
the pieces of :mod:`~gaincell.op.kernels.primitives` and is tested against it. A query only sees the
last M keys, so queries are processed in blocks against their band of at most M + block keys: time
O(T·M·D), never a T×T tensor. The key side is built once per decay anchor (about one window of
queries), and the per-block temporaries live in reused buffers. The backward pass recomputes each
block's scores instead of storing them (as FlashAttention does) and keeps only the ADC pass masks,
one byte per sub-tile output, so training memory is O(T·D·M/R bytes + M·D + block·M).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from gaincell.chip.cells import CellGains
from gaincell.chip.config import GainCellConfig
from gaincell.op.kernels.primitives import (
    Band,
    Plan,
    Scratch,
    adc_sum,
    chunk_value_columns,
    first_product,
    make_band,
    make_plan,
    query_rows,
    second_product,
    stored_columns,
)
from gaincell.op.normaliser import divide, ones_column_plan, ones_value


def banded_readout(pulses, keys, values, config: GainCellConfig, *, gains: CellGains | None = None, noise_seed=None):
    """The digital sum of the sub-tile ADC outputs for front-end outputs (Q, k~, v~), each (B, H, T, D).

    ``noise_seed`` fixes read noise (drawn from torch's RNG when None). With ``periphery.normaliser``
    the sum is divided by the ones column's (:mod:`gaincell.op.normaliser`), read by a second pass of
    the core with the constant stored in every column (column 0 kept): twice the work, simply. The
    output scaler is the caller's (:func:`gaincell.op.attention.gain_cell_attention`).
    """
    batch, heads, length, dim = pulses.shape
    gain_k = gain_v = None
    if gains is not None:
        gain_k, gain_v = gains.at_positions(torch.arange(length, device=pulses.device))
        gain_k = gain_k.to(pulses.dtype).expand(batch, -1, -1, -1).reshape(batch * heads, length, dim)
        gain_v = gain_v.to(pulses.dtype).expand(batch, -1, -1, -1).reshape(batch * heads, length, dim)
    if config.noise.read_noise > 0 and noise_seed is None:
        noise_seed = int(torch.randint(0, 2**62, (1,)).item())
    plan = make_plan(config, gains is not None)
    flat = [x.reshape(batch * heads, length, dim) for x in (pulses, keys, values)]
    readout = _BandedAnalogCore.apply(*flat, gain_k, gain_v, plan, noise_seed)
    if config.periphery.normaliser:  # a second pass with every value the constant: the same S (and S noise)
        ones = torch.full_like(flat[2], ones_value(config))
        column = _BandedAnalogCore.apply(flat[0], flat[1], ones, gain_k, gain_v, ones_column_plan(plan), noise_seed)
        readout = divide(readout, column[..., :1])
    return readout.view(batch, heads, length, dim)


def _chunk_passes(passed, band: Band, chunks: int, like, scratch: Scratch):
    """The ADC pass mask of each chunk's sub-tile, as ``like``'s dtype: (C, BH, Q, D)."""
    bh, queries, dim = passed.shape[1:]
    out = scratch("chunk_passes", like, chunks, bh, queries, dim)
    if band.fold is None:
        subtiles = scratch("passes", out, *passed.shape).copy_(passed)
        return torch.index_select(subtiles, 0, band.chunk_subtile, out=out)
    k = band.fold
    out[:k] = passed
    for start in range(k, chunks, k):
        out[start : start + k] = out[: min(k, chunks - start)]
    return out


def _read_backward(plan: Plan, grad, pulses, key_columns, grad_columns, sums, band: Band, generator, passed, scratch):
    """Gradients of one block's read for ``plan.grad_features``; S is recomputed, the ADC masks are kept.

    STE through the ADC rounding, zero where the ADC or the charge-to-pulse converter saturates.
    ``grad_columns`` = (key side (BH, L, F·D), value side (C·BH, g, F·D)) of the gradient model;
    the gradients w.r.t. them are added into ``sums`` (same layouts). Returns the pulses' (BH, Q, D).
    """
    scores_rows, _ = query_rows(plan.features, plan, pulses, band.query_age, plan.constant)
    scores = first_product(plan, scores_rows, key_columns, band, generator, scratch)
    bh, keys, queries = scores.shape
    chunks, g, dim = keys // plan.chunk, plan.chunk, pulses.shape[-1]
    by_chunk = scores.view(bh, chunks, g, queries).transpose(0, 1)
    widths = torch.clamp(by_chunk, 0.0, plan.s_sat, out=scratch("widths", scores, chunks, bh, g, queries))
    unsaturated = torch.eq(widths, by_chunk, out=scratch("unsaturated", scores, chunks, bh, g, queries))
    # d loss / d partial sum of chunk c, per feature: ∂A·(ADC passes)·gain/S_sat·λ^(p_f(t−a)).
    rows, decays = query_rows(plan.grad_features, plan, pulses, band.query_age)
    features = decays.shape[1]
    passes = _chunk_passes(passed, band, chunks, scores, scratch)
    scaled = grad[:, :, None, :] * (decays * (plan.readout_gain / plan.s_sat))[None, :, :, None]
    grad_partial = scratch("grad_partial", scores, chunks, bh, queries, features, dim)
    torch.mul(passes[:, :, :, None, :], scaled, out=grad_partial)
    grad_partial = grad_partial.view(chunks * bh, queries, features * dim)
    grad_widths = scratch("grad_widths", scores, chunks * bh, g, queries)
    if plan.grad_constant:
        charge = (passes * grad).sum(-1) * (plan.grad_constant * plan.readout_gain / plan.s_sat)
        torch.baddbmm(charge.view(chunks * bh, 1, queries), grad_columns[1], grad_partial.transpose(1, 2), out=grad_widths)
    else:
        torch.bmm(grad_columns[1], grad_partial.transpose(1, 2), out=grad_widths)
    sums[1].baddbmm_(widths.view(chunks * bh, g, queries), grad_partial)
    grad_scores = scratch("grad_scores", scores, bh, keys, queries)
    by_key = grad_scores.view(bh, chunks, g, queries).transpose(0, 1)
    torch.mul(grad_widths.view(chunks, bh, g, queries), unsaturated, out=by_key)
    grad_rows = torch.bmm(grad_scores.transpose(1, 2), grad_columns[0]).view(bh, queries, features, dim)
    grad_pulses = (grad_rows * decays[None, :, :, None]).sum(2)
    if plan.grad_constant:
        grad_pulses += plan.grad_constant * grad_scores.sum(1)[..., None]
    sums[0].add_(torch.bmm(grad_scores, rows, out=scratch("grad_keys", scores, bh, keys, rows.shape[-1])))
    return grad_pulses


class _Blocks:
    """Query blocks of one sequence, the band of keys each reads, grouped by shared decay anchor.

    Block b holds queries [t0, t1) and reads keys [n0, n1) with n0 = max(0, t0 − W), W = M − 1
    rounded up to the chunk g, n1 = t1 rounded up to g (keys are padded to a multiple of g; padded
    keys lie in the future of every query and are never visible). When ε shrinks the block below
    whole chunks, n0 counts from t0 rounded down to g (the extra keys are older than the window).
    A group of blocks starting at query a shares the anchor a (``Plan.anchor_span``) and reads the
    union of their bands.

    All of it depends on (plan, length) alone, so it is built once, on the CPU, where the bands' shape
    facts (edges, fold, occupancy) cost no device round trip, and copied once to each device
    (:func:`blocks_on`): a forward or backward on a GPU then reads no value back from it.
    """

    def __init__(self, plan: Plan, length: int, device: torch.device):
        self.plan, self.length = plan, length
        g = plan.chunk
        self.reach = -(-(plan.window - 1) // g) * g
        self.padded = -(-length // g) * g
        self.span = plan.anchor_span
        self.groups = tuple(
            (keys, key_age.to(device), tuple((index, t, n, band.to(device)) for index, t, n, band in blocks))
            for keys, key_age, blocks in self._groups()
        )

    def _key_start(self, t0: int) -> int:
        return max(0, t0 // self.plan.chunk * self.plan.chunk - self.reach)

    def _key_stop(self, t1: int) -> int:
        return min(-(-t1 // self.plan.chunk) * self.plan.chunk, self.padded)

    def _groups(self):
        """Yield ((m0, m1) the group's keys, their ages a − n, its blocks (index, (t0, t1), (n0, n1), band)).

        Keys newer than the group's last query are invisible to all of it: their age is clamped
        there, so their factor λ^(p·(a−n)) stays in the range the plan allows."""
        for anchor in range(0, self.length, self.span):
            stop = min(anchor + self.span, self.length)
            keys = (self._key_start(anchor), self._key_stop(stop))
            key_age = (anchor - torch.arange(*keys)).clamp_(min=anchor - stop + 1)
            yield keys, key_age, self._blocks(anchor, stop)

    def _blocks(self, anchor: int, stop: int):
        plan, g = self.plan, self.plan.chunk
        for t0 in range(anchor, stop, plan.block):
            t1 = min(t0 + plan.block, self.length)
            n0, n1 = self._key_start(t0), self._key_stop(t1)
            keys = torch.arange(n0, n1)
            chunk_subtile = (keys[::g] % plan.window) // plan.subtile_rows
            band = make_band(plan, torch.arange(t0, t1), keys, anchor, chunk_subtile)
            yield t0 // plan.block, (t0, t1), (n0, n1), band


@functools.lru_cache(maxsize=16)
def blocks_on(plan: Plan, length: int, device: torch.device) -> _Blocks:
    """The block schedule of a ``length``-token sequence on ``device``, made once per (plan, length, device).

    Its largest part is each band's visibility mask, block × (block + M) bytes: at T = 16384, M = 1024
    about 19 MB per entry, so the cache holds a handful of lengths (training and evaluation use one or two).
    """
    return _Blocks(plan, length, device)


def _generator(seed, index, device):
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed((seed + 1_000_003 * index) % 2**63)


def _pad(x, padded):
    if x is None or x.shape[1] == padded:
        return x
    return F.pad(x, (0, 0, 0, padded - x.shape[1]))


def _slice(x, keys):
    return None if x is None else x[:, keys[0] : keys[1]]


def _outside_autocast(method):
    """Run a pass of the analog core with autocast off, as ``torch.amp.custom_fwd(cast_inputs=float32)``
    and ``custom_bwd`` would, on whichever device the tensors are (those decorators fix one device type).

    The core is exact arithmetic of SPEC §3 in its inputs' dtype (float32 for bf16/fp16 models, see
    :func:`gaincell.op.attention.gain_cell_attention`); under autocast a matmul without ``out=``
    would run in bf16, and a backward called inside ``torch.autocast`` moved one of them there (0.3–0.5 %
    gradient error). The inputs are already float32 or float64, so none is cast.
    """

    @functools.wraps(method)
    def without_autocast(ctx, first, *args):
        device_type = first.device.type
        if not torch.amp.is_autocast_available(device_type):
            return method(ctx, first, *args)
        with torch.autocast(device_type, enabled=False):
            return method(ctx, first, *args)

    return without_autocast


class _BandedAnalogCore(torch.autograd.Function):
    """Blocked forward; backward recomputes each block's scores (memory O(T·D + block·M))."""

    @staticmethod
    @_outside_autocast
    def forward(ctx, pulses, keys, values, gain_k, gain_v, plan, noise_seed):
        bh, length, dim = pulses.shape
        blocks = blocks_on(plan, length, pulses.device)
        keys_p, values_p = _pad(keys, blocks.padded), _pad(values, blocks.padded)
        gain_k_p, gain_v_p = _pad(gain_k, blocks.padded), _pad(gain_v, blocks.padded)
        keep_pass = any(ctx.needs_input_grad[:3])
        out = torch.empty_like(pulses)
        scratch, passes = Scratch(), []
        for (m0, m1), key_age, group in blocks.groups:
            stored_keys = (keys_p[:, m0:m1], _slice(gain_k_p, (m0, m1)))
            key_columns = stored_columns(plan.features, plan, *stored_keys, key_age, ones=bool(plan.constant))
            value_columns = chunk_value_columns(plan.features, plan, values_p[:, m0:m1], _slice(gain_v_p, (m0, m1)), key_age)
            for index, (t0, t1), (n0, n1), band in group:
                generator = _generator(noise_seed, index, pulses.device)
                rows, decays = query_rows(plan.features, plan, pulses[:, t0:t1], band.query_age, plan.constant)
                scores = first_product(plan, rows, key_columns[:, n0 - m0 : n1 - m0], band, generator, scratch)
                widths = scores.clamp_(0.0, plan.s_sat)
                chunk_range = value_columns[(n0 - m0) // plan.chunk * bh : (n1 - m0) // plan.chunk * bh]
                readout, occupied = second_product(plan, widths, decays, chunk_range, band, generator, scratch)
                passes.append(adc_sum(plan, readout, occupied, out[:, t0:t1], scratch, keep_pass, band.all_occupied))
        if keep_pass:
            ctx.save_for_backward(pulses, keys, values, gain_k, gain_v, *passes)
            ctx.plan, ctx.noise_seed = plan, noise_seed
        return out

    @staticmethod
    @_outside_autocast
    def backward(ctx, grad_out):
        pulses, keys, values, gain_k, gain_v, *passes = ctx.saved_tensors
        plan, features = ctx.plan, ctx.plan.grad_features
        bh, length, dim = pulses.shape
        blocks = blocks_on(plan, length, pulses.device)
        keys_p, values_p = _pad(keys, blocks.padded), _pad(values, blocks.padded)
        gain_k_p, gain_v_p = _pad(gain_k, blocks.padded), _pad(gain_v, blocks.padded)
        grad_pulses = torch.empty_like(pulses)
        grad_keys = torch.zeros_like(keys_p)
        grad_values = torch.zeros_like(values_p)
        grad_out = grad_out.contiguous()
        scratch = Scratch()
        for (m0, m1), key_age, group in blocks.groups:
            stored = [(keys_p[:, m0:m1], _slice(gain_k_p, (m0, m1))), (values_p[:, m0:m1], _slice(gain_v_p, (m0, m1)))]
            key_columns = stored_columns(plan.features, plan, *stored[0], key_age, ones=bool(plan.constant))
            grad_key_columns = stored_columns(features, plan, *stored[0], key_age)
            grad_value_columns = chunk_value_columns(features, plan, *stored[1], key_age, features_inner=False)
            key_sum = torch.zeros_like(grad_key_columns)  # d loss / d key columns, summed over blocks
            value_sum = torch.zeros_like(grad_value_columns)
            for index, (t0, t1), (n0, n1), band in group:
                generator = _generator(ctx.noise_seed, index, pulses.device)
                k0, k1 = n0 - m0, n1 - m0
                c0, c1 = k0 // plan.chunk * bh, k1 // plan.chunk * bh
                grad_pulses[:, t0:t1] = _read_backward(
                    plan,
                    grad_out[:, t0:t1],
                    pulses[:, t0:t1],
                    key_columns[:, k0:k1],
                    (grad_key_columns[:, k0:k1], grad_value_columns[c0:c1]),
                    (key_sum[:, k0:k1], value_sum[c0:c1]),
                    band,
                    generator,
                    passes[index],
                    scratch,
                )
            # Chain rule from the columns back to the stored offsets, once per group.
            width = len(features) * dim
            key_slopes = stored_columns(features, plan, *stored[0], key_age, slope=True)
            grad_keys[:, m0:m1] += (key_slopes * key_sum).view(bh, m1 - m0, -1, dim).sum(2)
            value_sum = value_sum.view(-1, bh, plan.chunk, width).transpose(0, 1).reshape(bh, m1 - m0, width)
            value_slopes = stored_columns(features, plan, *stored[1], key_age, slope=True)
            grad_values[:, m0:m1] += (value_slopes * value_sum).view(bh, m1 - m0, -1, dim).sum(2)
        return grad_pulses, grad_keys[:, :length], grad_values[:, :length], None, None, None, None
