"""The pieces both fast forms of the analog core are made of (SPEC §3.3–3.5): banded and step.

:mod:`~gaincell.op.kernels.banded` (the parallel form) and :mod:`~gaincell.op.kernels.step` (the
generation step) compose these in the same order, so they compute the same numbers, and both are
tested against :mod:`gaincell.op.equations`. With leakage the power i of the cell polynomial decays
as λ^(i·age); splitting the age at an anchor makes that a query factor times a key factor, so all
powers stack into ONE matmul per product (without leakage they fold into g(k~), SPEC §3.4 note);
the plan (:mod:`~gaincell.op.kernels.plan`) spaces the anchors so that neither factor leaves float range.
The charge-to-pulse converter and the ADC of :mod:`gaincell.chip.periphery` are fused here with the
scaling of the second product's pulses and the digital sum (same formulas, fewer passes).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from gaincell.op.kernels.plan import Plan
from gaincell.op.kernels.plan import make_plan as make_plan  # the plan is one of the shared pieces


@dataclass
class Band:
    """Which stored keys a group of queries reads, and how much each has leaked.

    Ages are split at an anchor a: age = (t − a) + (a − n), so the decay λ^(p·age) =
    λ^(p·(t−a)) · λ^(p·(a−n)) scales query rows and key rows separately and the leaked score stays
    one matmul (no (queries, keys) decay table). Keys come in chunks of g = gcd(M, R) consecutive
    tokens; every chunk lies in one physical sub-tile (``chunk_subtile``).

    Two shortcuts, both derived from the fields above: ``edges`` lists the key ranges that some
    query cannot see (every other key is seen by all, so most of the band needs no mask), and
    ``fold`` = k when the first k chunks lie on distinct sub-tiles and each later chunk c on the
    sub-tile of chunk c − k (a band that wraps around the circular array), so partial sums fold
    into sub-tiles by adding slices (None: by index).
    """

    query_age: torch.Tensor  # (queries,) t − a
    key_age: torch.Tensor  # (keys,) a − n
    valid: torch.Tensor  # (queries, keys) bool: written and 0 <= age < M
    chunk_subtile: torch.Tensor  # (keys // g,) physical sub-tile of each chunk
    occupied: torch.Tensor  # (n_subtiles, queries) bool: the sub-tile holds a visible token
    edges: tuple[tuple[slice, torch.Tensor], ...] = ()  # (key range, its (keys, queries) slice of valid)
    fold: int | None = None
    all_occupied: bool | None = None  # every sub-tile second_product reads out is occupied (None: not known)

    def to(self, device: torch.device) -> Band:
        """The same band on ``device`` (shape facts, made once, then read by every forward there)."""
        tensors = (self.query_age, self.key_age, self.valid, self.chunk_subtile, self.occupied)
        edges = tuple((rows, visible.to(device)) for rows, visible in self.edges)
        return Band(*(x.to(device) for x in tensors), edges, self.fold, self.all_occupied)


def make_band(plan: Plan, query_positions, key_positions, anchor: int, chunk_subtile) -> Band:
    """A :class:`Band` for queries at ``query_positions`` reading keys at ``key_positions`` (−1: empty)."""
    age = query_positions[:, None] - key_positions[None, :]
    valid = (age >= 0) & (age < plan.window) & (key_positions >= 0)[None, :]
    queries, keys = valid.shape
    per_chunk = valid.view(queries, keys // plan.chunk, plan.chunk).any(-1).to(torch.int32)
    occupied = torch.zeros(plan.n_subtiles, queries, dtype=torch.int32, device=valid.device)
    occupied.index_add_(0, chunk_subtile, per_chunk.T)
    # Keys newer than every query are invisible: their age is clamped there, so their factor stays in range.
    key_age = (anchor - key_positions).clamp(min=anchor - int(query_positions.max()))
    band = Band(query_positions - anchor, key_age, valid, chunk_subtile, occupied > 0)
    band.edges, band.fold = _edges(valid), band_fold(chunk_subtile.tolist())
    in_order = band.occupied if band.fold is None else band.occupied[chunk_subtile[: band.fold]]  # as second_product
    band.all_occupied = bool(in_order.all())
    return band


def _edges(valid: torch.Tensor) -> tuple[tuple[slice, torch.Tensor], ...]:
    """Leading and trailing key ranges not seen by every query (the whole band if the rest is ragged)."""
    seen_by_all = valid.all(0).tolist()
    keys = len(seen_by_all)
    first = next((i for i, seen in enumerate(seen_by_all) if seen), keys)
    stop = keys - next((i for i, seen in enumerate(reversed(seen_by_all)) if seen), keys - first)
    if not all(seen_by_all[first:stop]):
        first, stop = keys, keys
    ranges = (slice(0, first), slice(stop, keys))
    return tuple((rows, valid[:, rows].T.contiguous()) for rows in ranges if rows.stop > rows.start)


def band_fold(chunk_subtile: list[int]) -> int | None:
    """k such that chunks [0, k) lie on distinct sub-tiles and chunk c on the sub-tile of c − k, or None."""
    k = len(set(chunk_subtile))
    if len(set(chunk_subtile[:k])) < k or any(s != chunk_subtile[c - k] for c, s in enumerate(chunk_subtile) if c >= k):
        return None
    return k


def feature_decays(features, plan: Plan, age: torch.Tensor, dtype) -> torch.Tensor:
    """λ^(p_f·age) for every feature: (len(age), F); exactly 1 without leakage or for p = 0."""
    powers = _powers(tuple(f.power for f in features), age.device)
    return torch.exp(-plan.leakage * powers * age.to(torch.float64)[:, None]).to(dtype)


@functools.lru_cache(maxsize=64)
def _powers(powers: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The features' powers as a float64 tensor on ``device``, made once: a tensor built from a Python
    list is a host-to-device copy, and this runs for every block of every layer."""
    return torch.tensor([float(p) for p in powers], dtype=torch.float64, device=device)


def query_rows(features, plan: Plan, pulses, query_age, constant: float = 0.0):
    """Query side of the factorised products: [λ^(p_f·(t−a)) Q]_f, (BH, Q, F·D), and the decays (Q, F).

    With a ``constant`` one more column, constant·Σ_d Q_td, meets a column of ones on the stored side.
    """
    decays = feature_decays(features, plan, query_age, pulses.dtype)
    rows = (pulses[:, :, None, :] * decays[None, :, :, None]).flatten(2)
    if constant:
        rows = torch.cat([rows, constant * pulses.sum(-1, keepdim=True)], dim=2)
    return rows, decays


def stored_columns(features, plan: Plan, stored, gain, key_age, slope: bool = False, ones: bool = False):
    """Stored side: [λ^(p_f·(a−n)) φ_f(y~) (· gain)]_f, (BH, L, F·D); ``slope``: φ_f' for the chain
    rule; ``ones``: one more column of ones (the constant term, see :func:`query_rows`)."""
    bh, keys, dim = stored.shape
    decays = feature_decays(features, plan, key_age, stored.dtype)
    columns = stored.new_empty(bh, keys, len(features) * dim + ones)
    for index, feature in enumerate(features):
        feature.scaled(stored, decays[:, index, None], gain, columns[:, :, index * dim : (index + 1) * dim], slope)
    if ones:
        columns[:, :, -1] = 1.0
    return columns


def chunk_value_columns(features, plan: Plan, stored, gain, key_age, features_inner: bool = True):
    """The stored side of the second product, one matrix per chunk of g keys: (C·BH, F·g, D), or
    (C·BH, g, F·D) without ``features_inner`` (the layout the backward pass multiplies from the left).

    Chunks lead, so a band (a range of chunks) is a contiguous slice that batched matmuls take as is.
    """
    bh, keys, dim = stored.shape
    chunks, g = keys // plan.chunk, plan.chunk
    decays = feature_decays(features, plan, key_age, stored.dtype).view(chunks, g, -1)
    columns = stored.new_empty(chunks, bh, len(features), g, dim)
    by_chunk = stored.view(bh, chunks, g, dim)
    gain = None if gain is None else gain.view(bh, chunks, g, dim)
    for index, feature in enumerate(features):
        feature.scaled(by_chunk, decays[:, :, index, None], gain, columns[:, :, index].transpose(0, 1))
    if features_inner:
        return columns.view(chunks * bh, -1, dim)
    return columns.transpose(2, 3).reshape(chunks * bh, g, -1)


class Scratch:
    """Buffers reused from block to block: on CPU a fresh multi-MB temporary per block costs page faults."""

    def __init__(self):
        self.buffers: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, like: torch.Tensor, *shape: int) -> torch.Tensor:
        size = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < size:
            buffer = self.buffers[name] = like.new_empty(size)
        return buffer[:size].view(shape)


def _noise(generator, shape, like, std):
    return std * torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def first_product(plan: Plan, rows, key_columns, band: Band, generator, scratch: Scratch, hide: bool = True):
    """First product S_tn = Σ_f λ^(p_f·age) Q_t · φ_f(k~_n) + β0 Σ_d Q_td, one matmul, stored
    transposed as (BH, keys, queries) so that each chunk of keys is one contiguous block.

    ``hide``: S = −1 where a query cannot see the key, so the converter gives no pulse and no gradient.
    """
    bh, queries, _ = rows.shape
    keys = key_columns.shape[1]
    scores = torch.bmm(key_columns, rows.transpose(1, 2), out=scratch("scores", rows, bh, keys, queries))
    if plan.read_noise:
        scores += _noise(generator, (bh, queries, keys), scores, plan.read_noise * plan.s_sat).transpose(1, 2)
    if hide:
        _hide(scores, band)
    return scores


def _hide(scores, band: Band) -> None:
    """S = −1 for the (key, query) pairs outside the window, touching only the band's edge keys."""
    for rows_range, visible in band.edges:
        keep = visible.to(scores.dtype)
        scores[:, rows_range].mul_(keep).add_(keep - 1)


def second_product(plan: Plan, widths, decays, value_columns, band: Band, generator, scratch: Scratch):
    """Second product and read-out gain, one partial sum per sub-tile: returns (Y, occupied).

    ``widths`` is S_sat·P (BH, keys, Q). Per chunk c of g keys, A_c = Σ_f Σ_n (P_tn λ^(p_f(t−a))) ·
    λ^(p_f(a−n)) φ_f(v~_n) is ONE matmul with the features stacked along its inner dimension; the
    query-side factors, 1/S_sat and the read-out gain scale the pulse widths on the way in. Y is
    (sub-tiles, BH, Q, D) in band order when ``band.fold`` allows, with ``occupied`` to match.
    """
    bh, keys, queries = widths.shape
    chunks, g = keys // plan.chunk, plan.chunk
    dim = value_columns.shape[-1]
    scales = decays * (plan.readout_gain / plan.s_sat)
    by_chunk = widths.view(bh, chunks, g, queries).transpose(0, 1)
    weights = scratch("weights", widths, chunks, bh, scales.shape[1], g, queries)
    for index in range(scales.shape[1]):
        torch.mul(by_chunk, scales[:, index], out=weights[:, :, index])
    weights = weights.view(chunks * bh, -1, queries).transpose(1, 2)
    partial = scratch("partial", widths, chunks * bh, queries, dim)
    if plan.constant:
        charge = widths.view(bh, chunks, g, queries).sum(2).transpose(0, 1)
        charge = (charge * (plan.constant * plan.readout_gain / plan.s_sat)).reshape(chunks * bh, queries, 1)
        torch.baddbmm(charge, weights, value_columns, out=partial)
    else:
        torch.bmm(weights, value_columns, out=partial)
    partial = partial.view(chunks, bh, queries, dim)
    if band.fold is None:
        readout = scratch("readout", widths, plan.n_subtiles, bh, queries, dim).zero_()
        readout.index_add_(0, band.chunk_subtile, partial)
        occupied = band.occupied
    else:
        k = band.fold
        for start in range(k, chunks, k):
            partial[: min(k, chunks - start)] += partial[start : start + k]
        readout, occupied = partial[:k], band.occupied[band.chunk_subtile[:k]]
    if plan.read_noise:
        noise = _noise(generator, (bh, readout.shape[0], queries, dim), readout, plan.read_noise * plan.adc_high)
        readout += noise.transpose(0, 1)
    return readout, occupied


def adc_sum(plan: Plan, readout, occupied, out, scratch: Scratch, keep_pass: bool = False, all_occupied=None):
    """One ADC per occupied sub-tile (clamp, then the quantiser of :mod:`gaincell.chip.periphery` on
    ``adc``'s grid), added digitally into ``out`` (BH, Q, D).

    Σ_s (origin + step·k_s) is computed as step·Σ_s k_s + origin·(number of occupied sub-tiles);
    on SPEC's grid the origin is 0. With ``keep_pass`` returns where each ADC passes its input
    (uint8, the STE derivative). ``all_occupied``: ``occupied.all()`` when the caller knows it (asking the
    tensor waits for the device).
    """
    adc = plan.adc
    levels = torch.clamp(readout, adc.low, adc.high, out=scratch("levels", readout, *readout.shape))
    passed = torch.eq(levels, readout, out=scratch("passed", readout, *readout.shape)) if keep_pass else None
    if adc.levels is not None:
        if adc.origin:
            levels.sub_(adc.origin)
        levels.div_(adc.step).round_()
    if not (bool(occupied.all()) if all_occupied is None else all_occupied):
        mask = occupied.to(readout.dtype)[:, None, :, None]
        levels.mul_(mask)
        if passed is not None:
            passed.mul_(mask)
    torch.sum(levels, 0, out=out)
    if adc.levels is not None:
        out.mul_(adc.step)
        if adc.origin:
            out.add_((adc.origin * occupied.sum(0).to(out.dtype))[None, :, None])
    return None if passed is None else passed.to(torch.uint8)


def analog_read(plan: Plan, pulses, keys, values, gain_k, gain_v, band: Band, generator=None, keep=False):
    """Both analog products for a group of queries against a band of stored keys (SPEC §3.3–3.5).

    pulses (BH, Q, D); keys, values, gains (BH, L, D) with L a multiple of the chunk g.
    Returns the digital sum of the sub-tile ADC outputs (BH, Q, D) — and, with ``keep``, the
    intermediates: S and P as (BH, Q, L), per-sub-tile read-outs Y as (BH, n_subtiles, Q, D).
    """
    scratch = Scratch()
    features = plan.features
    key_columns = stored_columns(features, plan, keys, gain_k, band.key_age, ones=bool(plan.constant))
    value_columns = chunk_value_columns(features, plan, values, gain_v, band.key_age)
    rows, decays = query_rows(features, plan, pulses, band.query_age, plan.constant)
    scores = first_product(plan, rows, key_columns, band, generator, scratch, hide=not keep)
    kept = ()
    if keep:
        kept = (scores.transpose(1, 2).clone(),)
        _hide(scores, band)
    widths = scores.clamp_(0.0, plan.s_sat)
    readout, occupied = second_product(plan, widths, decays, value_columns, band, generator, scratch)
    digital = pulses.new_empty(pulses.shape)
    adc_sum(plan, readout, occupied, digital, scratch, all_occupied=band.all_occupied)
    if keep:
        in_order = band.fold is None
        subtiles = torch.arange(plan.n_subtiles, device=readout.device) if in_order else band.chunk_subtile[: band.fold]
        physical = readout.new_zeros(plan.n_subtiles, *readout.shape[1:]).index_copy_(0, subtiles, readout)
        return digital, (*kept, widths.transpose(1, 2) / plan.s_sat, physical.transpose(0, 1))
    return digital
