"""The step form of the analog core (SPEC §3.6): one new token's query against the M slots of a memory.

:class:`~gaincell.op.memory.GainCellMemory` holds the slots; this module does a step's arithmetic
with the pieces of :mod:`~gaincell.op.kernels.primitives`, in the order of
:func:`~gaincell.op.kernels.primitives.analog_read`, so a step returns what the banded form returns at
that position (tested against it and the equations). One token is a handful of tiny matmuls, so
per-op overhead is the cost: the stored side of both products, [λ^(p·(a−n)) φ_p(y~_n)]_p for every
slot, depends only on the slot's content and the decay anchor a, which moves once per ``block``
tokens. :class:`StepKernel` keeps it between steps and recomputes only the slot written; decays
come from a table by age. Once the window is full the band (which slots the query sees, which
sub-tile each lies on) no longer changes, so a step costs the same whatever the tokens generated.
"""

from __future__ import annotations

import torch

from gaincell.chip.cells import CellGains
from gaincell.chip.config import GainCellConfig, PeripheryConfig
from gaincell.chip.periphery import quantize
from gaincell.op.kernels.primitives import (
    Band,
    Scratch,
    adc_sum,
    band_fold,
    chunk_value_columns,
    feature_decays,
    first_product,
    make_band,
    make_plan,
    second_product,
    stored_columns,
)
from gaincell.op.normaliser import ones_column_plan
from gaincell.op.scalers import Scalers

#: The scalers' parameters in the order :func:`stacked_scalers` stacks them: all a, then all b.
_SCALER_KEYS = tuple(f"{ab}_{name}" for ab in "ab" for name in Scalers.names)


def stacked_scalers(scalers: Scalers, dtype: torch.dtype, cached: tuple | None) -> tuple:
    """All scalers' a and b as (4, H, 1, 1) in q, k, v, o order (Scalers.apply computes the same
    a·x + b), then b and a of q, k, v as (3, 1, H, 1, 1) for the stacked front end, then the output
    scaler's a and b (H, 1, 1), behind the
    scalers' versions and dtype: ``cached`` (the previous return) is reused until a scaler changes
    in place (its tensor version moves; a write through ``.data`` does not move it)."""
    registered = scalers._parameters  # a dict look-up each, not nn.Module.__getattr__
    parameters = [registered[key] for key in _SCALER_KEYS]
    try:
        versions = tuple((id(p), p._version) for p in parameters)
    except RuntimeError:  # scalers made in inference mode keep no version: stack them every step
        versions = None
    if cached is None or versions is None or cached[0] != versions or cached[1] != dtype:
        half = len(parameters) // 2
        a, b = (torch.stack(parameters[i : i + half]).to(dtype)[:, :, None, None] for i in (0, half))
        cached = (versions, dtype, (a, b, b[:3, None], a[:3, None], a[3], b[3]))
    return cached


def quantizer_grid(periphery: PeripheryConfig, dtype: torch.dtype, device) -> tuple[torch.Tensor, ...] | None:
    """Bounds and steps of the q and k/v quantisers as (3, 1, 1, 1, 1) rows, when both round on
    SPEC's zero-origin grid (else None: :func:`quantize` per quantiser)."""
    q, kv = periphery.q, periphery.kv
    if q.levels is None or kv.levels is None or q.origin or kv.origin:
        return None
    rows = [[q.low, kv.low, kv.low], [q.high, kv.high, kv.high], [q.step, kv.step, kv.step]]
    return tuple(torch.tensor(r, dtype=dtype, device=device).view(3, 1, 1, 1, 1) for r in rows)


def encode(periphery: PeripheryConfig, grid, q, k, v, a_qkv, b_qkv) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~gaincell.op.equations.front_end` for one token: pulses, and the stored k~ and v~ stacked
    (2, B, H, 1, D). q, k and v go through their scalers and quantisers as one stacked tensor
    (per-row bounds and steps of :func:`quantizer_grid`: the same clamp, division, rounding and
    product as :func:`quantize`), and the straight-through autograd function is skipped
    (generation needs no gradient)."""
    x = torch.addcmul(b_qkv, a_qkv, torch.stack([q, k, v]))  # (3, B, H, 1, D)
    if grid is None:
        return quantize(x[0], periphery.q), quantize(x[1:], periphery.kv).sub_(periphery.offset)
    low, high, step = grid
    torch.clamp(x, low, high, out=x).div_(step).round_().mul_(step)
    return x[0], x[1:].sub_(periphery.offset)


class StepKernel:
    """The step's analog core for one memory: decay tables by age, the stored side of both
    products (``key_columns``, ``value_columns``, as the banded form lays them out), the bands and
    buffers, all kept between steps."""

    def __init__(
        self, config: GainCellConfig, shape: tuple[int, int, int], gains: CellGains | None, device, dtype, *, ones=False
    ):
        """``ones``: the normaliser's kernel (:mod:`gaincell.op.normaliser`), read through its ideal converter."""
        plan = make_plan(config, gains is not None)
        plan = self.plan = ones_column_plan(plan) if ones else plan
        self.window, self.shape = config.window, shape  # shape: (batch, heads, head_dim)
        self.chunk_subtile = torch.arange(0, self.window, plan.chunk, device=device) // config.subtile_rows
        self.subtile_starts = torch.arange(0, self.window, config.subtile_rows, device=device)
        self.filling_bands: dict[int, tuple[Band, torch.Tensor, bool]] = {}  # by occupied sub-tiles
        self.full_band: tuple[Band, torch.Tensor, bool] | None = None  # see band
        self.scratch = Scratch()
        # Decays by age, computed once: a query's t - a is in [0, block), a new key's a - t in (-block, 0].
        self.ages = torch.arange(-plan.block + 1, plan.block, device=device)
        self.age_decays = feature_decays(plan.features, plan, self.ages, dtype)
        self.readout_scales = self.age_decays * (plan.readout_gain / plan.s_sat)
        # With leakage each feature is one power c·y^p: a new slot's columns are then one stacked multiply
        # by c·λ^(p·age) (the same factors Feature.scaled multiplies, so the same numbers).
        terms = [feature.terms() for feature in plan.features]
        self.powers = None
        if terms and all(len(t) == 1 and t[0][0] for t in terms):
            self.powers = tuple(p for ((p, _),) in terms)
            self.age_scales = torch.stack([c * self.age_decays[:, i] for i, ((_, c),) in enumerate(terms)], 1)
        self.gains = None  # (2 B H, M, D): the key arrays' cell gains, then the value arrays'
        if gains is not None:
            batch, heads, dim = shape
            stacked = torch.stack([gains.key, gains.value]).to(dtype)
            self.gains = stacked[:, None].expand(-1, batch, -1, -1, -1).reshape(2 * batch * heads, self.window, dim)

    def build(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, anchor: int) -> None:
        """The stored side of both products for every slot (B, H, M, D), decayed to ``anchor``."""
        plan, features = self.plan, self.plan.features
        batch, heads, dim = self.shape
        bh, key_age = batch * heads, anchor - positions
        gain_k, gain_v = (None, None) if self.gains is None else (self.gains[:bh], self.gains[bh:])
        flat_keys, flat_values = (x.view(bh, self.window, dim) for x in (keys, values))
        self.key_columns = stored_columns(features, plan, flat_keys, gain_k, key_age, ones=bool(plan.constant))
        self.value_columns = chunk_value_columns(features, plan, flat_values, gain_v, key_age)
        self.full_band = None

    def write(self, stored: torch.Tensor, slot: int, key_age: int) -> None:
        """Recompute the stored side of the slot just written, keys and values in one call (``stored``
        is the new k~ and v~, (2, B, H, 1, D))."""
        plan, features = self.plan, self.plan.features
        batch, heads, dim = self.shape
        bh = batch * heads
        gain = None if self.gains is None else self.gains[:, slot : slot + 1]
        row = key_age + plan.block - 1
        decays = self.age_decays[row : row + 1]  # what primitives.stored_columns computes for this age
        width = len(features) * dim
        by_chunk = self.value_columns.view(-1, bh, len(features), plan.chunk, dim)
        if self.powers is not None and gain is None:  # as Feature.scaled computes, straight into place
            y = stored.view(2, bh, 1, dim)
            powered = torch.cat([y if p == 1 else y**p for p in self.powers], dim=2)  # (2, BH, F, D)
            scales = self.age_scales[row].view(1, -1, 1)
            torch.mul(powered[0], scales, out=self.key_columns[:, slot, :width].view(bh, -1, dim))
            torch.mul(powered[1], scales, out=by_chunk[slot // plan.chunk, :, :, slot % plan.chunk])
            return  # the constant column of ones stays as build wrote it
        columns = stored.new_empty(2 * bh, 1, width + bool(plan.constant))
        if self.powers is not None:  # one multiply for all features, as Feature.scaled computes each
            y = stored.view(2 * bh, 1, 1, dim)
            powered = torch.cat([y if p == 1 else y**p for p in self.powers], dim=2)
            scales = self.age_scales[row].view(1, 1, -1, 1)
            torch.mul(powered, scales, out=columns[:, :, :width].view(2 * bh, 1, -1, dim))
            if gain is not None:
                columns[:, :, :width].view(2 * bh, 1, -1, dim).mul_(gain[:, :, None])
        else:
            for index, feature in enumerate(features):
                feature.scaled(
                    stored.view(2 * bh, 1, dim), decays[:, index, None], gain, columns[:, :, index * dim : (index + 1) * dim]
                )
        if plan.constant:
            columns[:, :, -1] = 1.0
        self.key_columns[:, slot] = columns[:bh, 0]
        by_chunk[slot // plan.chunk, :, :, slot % plan.chunk] = columns[bh:, 0, :width].view(bh, len(features), dim)

    def band(self, t: int, positions: torch.Tensor, length: int, anchor: int, row: int) -> tuple[Band, torch.Tensor, bool]:
        """Which slots query t sees, with the occupancy of its sub-tiles in the band's chunk order
        and whether all are occupied. Kept between steps: with a full window only the query's age
        changes (the step passes it as ``row``); while it fills, only the number of occupied
        sub-tiles. (The step reads a band's ``fold``, ``chunk_subtile`` and ``occupied``;
        ``query_age``, ``key_age`` and ``valid`` are those of the step it was made at.)"""
        if length < self.window:
            return self._filling_band(positions, length, anchor, row)
        if self.full_band is None:
            query = torch.tensor([t], device=positions.device)
            band = make_band(self.plan, query, positions, anchor, self.chunk_subtile)
            self.full_band = (band, self._in_chunk_order(band), bool(band.occupied.all()))
        return self.full_band

    def _filling_band(self, positions: torch.Tensor, length: int, anchor: int, row: int) -> tuple[Band, torch.Tensor, bool]:
        """make_band's result while the window fills: slots 0..t hold positions 0..t in order (a
        memory fills from empty), so the rest are the one edge nobody sees (:meth:`read` hides it),
        and sub-tile s is occupied once its first slot s·R is written: one band per count of them."""
        count = -(-length // self.plan.subtile_rows)
        if count not in self.filling_bands:
            valid = (positions >= 0)[None]
            occupied = (self.subtile_starts < length)[:, None]
            band = Band(self.ages[row : row + 1], anchor - positions, valid, self.chunk_subtile, occupied)
            band.fold = band_fold(self.chunk_subtile.tolist())
            self.filling_bands[count] = (band, self._in_chunk_order(band), bool(occupied.all()))
        return self.filling_bands[count]

    @staticmethod
    def _in_chunk_order(band: Band) -> torch.Tensor:
        """The band's sub-tile occupancy in the order the folded read-out lists sub-tiles."""
        return band.occupied if band.fold is None else band.occupied[band.chunk_subtile[: band.fold]]

    def read(self, pulses: torch.Tensor, bands: tuple[Band, torch.Tensor, bool], row: int, length: int, generator):
        """:func:`~gaincell.op.kernels.primitives.analog_read` on the kept stored side: the same steps in
        the same order. ``row`` indexes the query's age t − a in the decay tables; slots from
        ``length`` on are empty while the window fills."""
        plan, (band, in_order, all_occupied) = self.plan, bands
        decays = self.age_decays[row : row + 1]  # primitives.query_rows, with decays from the table
        scores = first_product(plan, self._query_rows(pulses, decays), self.key_columns, band, generator, self.scratch)
        if length < self.window:  # the empty slots: S = −1, no pulse (as primitives hides that edge)
            scores[:, length:].fill_(-1.0)
        widths = scores.clamp_(0.0, plan.s_sat)
        if band.fold == self.window // plan.chunk and not plan.read_noise:
            readout, occupied = self._one_query_readout(widths, self.readout_scales[row : row + 1]), in_order
        else:
            readout, occupied = second_product(plan, widths, decays, self.value_columns, band, generator, self.scratch)
        digital = pulses.new_empty(pulses.shape)
        adc_sum(plan, readout, occupied, digital, self.scratch, all_occupied=all_occupied)
        return digital

    def _query_rows(self, pulses: torch.Tensor, decays: torch.Tensor) -> torch.Tensor:
        """primitives.query_rows for one query, written into a kept buffer: [λ^(p_f·(t−a)) Q]_f and the
        constant column."""
        plan, (bh, _, dim) = self.plan, pulses.shape
        width = decays.shape[1] * dim
        rows = self.scratch("rows", pulses, bh, 1, width + bool(plan.constant))
        torch.mul(pulses[:, :, None, :], decays[None, :, :, None], out=rows[:, :, :width].view(bh, 1, -1, dim))
        if plan.constant:
            torch.sum(pulses, -1, keepdim=True, out=rows[:, :, width:]).mul_(plan.constant)
        return rows

    def _one_query_readout(self, widths: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """primitives.second_product for one query over a window whose chunks are its sub-tiles (no
        folding) and no read noise: the same products and sums in a third of the tensor ops.
        ``scales`` are the query-side decays times the read-out gain over S_sat, (1, F).

        Per chunk c (= sub-tile), A_c = Σ_f Σ_n P_n λ^(p_f(t−a)) · λ^(p_f(a−n)) φ_f(v~_n) as one
        matmul, plus the constant term's charge; returns (sub-tiles, BH, 1, D)."""
        plan = self.plan
        bh, keys, _ = widths.shape
        chunks, g = keys // plan.chunk, plan.chunk
        by_chunk = widths.view(bh, chunks, g).transpose(0, 1)  # (C, BH, g)
        weights = self.scratch("one_query_weights", widths, chunks, bh, scales.shape[1], g)
        torch.mul(by_chunk[:, :, None, :], scales.view(1, 1, -1, 1), out=weights)
        weights = weights.view(chunks * bh, 1, -1)
        if plan.constant:
            charge = by_chunk.sum(-1) * (plan.constant * plan.readout_gain / plan.s_sat)
            partial = torch.baddbmm(charge.view(chunks * bh, 1, 1), weights, self.value_columns)
        else:
            partial = torch.bmm(weights, self.value_columns)
        return partial.view(chunks, bh, 1, -1)
