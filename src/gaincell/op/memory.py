"""The gain-cell KV memory a layer uses in generation: what the chip does token by token (SPEC §3.6).

Per head, M physical slots. At step t the new token's k, v (after scalers, clamp, quantisation)
are written into slot t mod M, overwriting the oldest; the query reads every written slot through
the same analog products as the parallel op. Leakage is exact: a stored value written at step n
is read at step t as λ^(t−n) of its offset voltage (every stored value ages one step per token),
computed from its age rather than by repeated multiplication, so no rounding drift accumulates.

Speed (one token is a handful of tiny matmuls, so per-step overhead is the cost): the stored side of
both products, [λ^(p·(a−n)) φ_p(y~_n)]_p for every slot, depends only on the slot's content and the
decay anchor a, which moves once per ``block`` tokens. It is kept between steps; a step recomputes
only the slot it writes, and the whole side is rebuilt when the anchor moves. Once the window is
full the band (which slots the query sees, which sub-tile each lies on) no longer changes either,
so a step costs the same whatever the number of tokens generated.
"""

from __future__ import annotations

import torch

from gaincell.chip.cells import CellGains
from gaincell.chip.config import GainCellConfig
from gaincell.chip.periphery import quantize
from gaincell.errors import GainCellError
from gaincell.op.attention import check_qkv, gain_cell_attention
from gaincell.op.equations import front_end
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
from gaincell.op.scalers import Scalers
from gaincell.validation import check_int

#: The scalers' parameters in the order :meth:`GainCellMemory._affine` stacks them: all a, then all b.
_SCALER_KEYS = tuple(f"{ab}_{name}" for ab in "ab" for name in Scalers.names)


class GainCellMemory:
    """M slots of stored keys and values for one layer, all heads and a batch of sequences.

    ``step(q_t, k_t, v_t)`` takes the raw (pre-scaler) projections of one new token, shape
    (B, H, 1, D), and returns what :func:`~gaincell.op.attention.gain_cell_attention` returns at that
    position. ``prefill`` runs a whole prompt through the parallel op and keeps its last M tokens.
    The softmax preset keeps raw keys and values and reads them with windowed softmax.
    """

    def __init__(
        self,
        config: GainCellConfig,
        scalers: Scalers | None,
        batch: int,
        n_heads: int,
        head_dim: int,
        *,
        gains: CellGains | None = None,
        device=None,
        dtype: torch.dtype = torch.float32,
    ):
        for name, value in (("batch", batch), ("n_heads", n_heads), ("head_dim", head_dim)):
            check_int(name, value, 1)
        if config.attention != "softmax" and scalers is None:
            raise GainCellError("scalers are required for a gain-cell memory (use Scalers(n_heads))")
        self.config, self.scalers, self.gains = config, scalers, gains
        self.shape = (batch, n_heads, head_dim)
        window = config.window
        self.keys = torch.zeros(batch, n_heads, window, head_dim, device=device, dtype=dtype)
        self.values = torch.zeros_like(self.keys)
        self.positions = torch.full((window,), -1, dtype=torch.long, device=device)
        self.length = 0
        self._anchor: int | None = None  # the anchor the kept stored side was built for (None: stale)
        self._full_band: tuple[Band, torch.Tensor, bool] | None = None  # see _band
        if config.attention != "softmax":
            self.plan = make_plan(config, gains is not None)
            starts = torch.arange(0, window, self.plan.chunk, device=device)
            self.chunk_subtile = starts // config.subtile_rows
            self._subtile_starts = torch.arange(0, window, config.subtile_rows, device=device)
            self._filling_bands: dict[int, tuple[Band, torch.Tensor, bool]] = {}  # by occupied sub-tiles
            self._scratch = Scratch()
            # Decays by age, computed once: a query's t - a is in [0, block), a new key's a - t in (-block, 0].
            ages = torch.arange(-self.plan.block + 1, self.plan.block, device=device)
            self._ages = ages
            self._age_decays = feature_decays(self.plan.features, self.plan, ages, dtype)
            self._readout_scales = self._age_decays * (self.plan.readout_gain / self.plan.s_sat)
            # With leakage each feature is one power c·y^p: a new slot's columns are then one stacked multiply
            # by c·λ^(p·age) (the same factors Feature.scaled multiplies, so the same numbers).
            terms = [feature.terms() for feature in self.plan.features]
            self._powers = None
            if terms and all(len(t) == 1 and t[0][0] for t in terms):
                self._powers = tuple(p for ((p, _),) in terms)
                self._age_scales = torch.stack([c * self._age_decays[:, i] for i, ((_, c),) in enumerate(terms)], 1)
            self._affine_cache: tuple[tuple, torch.dtype, tuple[torch.Tensor, ...]] | None = None
            self._grids: dict[torch.dtype, tuple[torch.Tensor, ...]] = {}
            self._gains = None  # (2 B H, M, D): the key arrays' cell gains, then the value arrays'
            if gains is not None:
                stacked = torch.stack([gains.key, gains.value]).to(dtype)
                self._gains = stacked[:, None].expand(-1, batch, -1, -1, -1).reshape(2 * batch * n_heads, window, head_dim)

    def reset(self) -> None:
        """Forget everything (a new sequence): slots are marked empty, nothing is read from them."""
        self.keys = torch.zeros_like(self.keys)  # new tensors: these may have been made in inference mode
        self.values = torch.zeros_like(self.values)
        self.positions = torch.full_like(self.positions, -1)
        self.length = 0
        self._anchor = None
        self._affine_cache = None

    def select(self, index: torch.Tensor) -> None:
        """Keep the sequences ``index`` of the batch, in that order (beam search reorders beams)."""
        index = index.to(self.keys.device)
        self.keys = self.keys.index_select(0, index)
        self.values = self.values.index_select(0, index)
        self._anchor = None

    def _check(self, q, k, v, steps: str) -> None:
        check_qkv(q, k, v)
        batch, heads, dim = self.shape
        if (q.shape[0], q.shape[1], q.shape[3]) != (batch, heads, dim):
            raise GainCellError(
                f"q, k, v must have shape (batch={batch}, heads={heads}, {steps}, head_dim={dim}), got {tuple(q.shape)}"
            )

    def _write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store tokens at positions length, length+1, … into slots position mod M."""
        count = keys.shape[2]
        positions = torch.arange(self.length, self.length + count, device=self.positions.device)
        slots = positions % self.config.window
        self.keys[:, :, slots] = keys.to(self.keys.dtype)
        self.values[:, :, slots] = values.to(self.values.dtype)
        self.positions[slots] = positions
        self.length += count
        self._anchor = None

    @torch.no_grad()
    def prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Process a prompt in parallel (banded op) into an empty memory; returns its outputs."""
        self._check(q, k, v, "seq")
        if self.length:
            raise GainCellError("prefill needs an empty memory (call reset() first, or use step())")
        out = gain_cell_attention(q, k, v, self.scalers, self.config, gains=self.gains)
        self._affine_cache = None
        keep = min(q.shape[2], self.config.window)
        self.length = q.shape[2] - keep
        if self.config.attention == "softmax":
            self._write(k[:, :, -keep:], v[:, :, -keep:])
        else:
            _, keys, values = front_end(q[:, :, -keep:], k[:, :, -keep:], v[:, :, -keep:], self.scalers, self.config)
            self._write(keys, values)
        return out

    @torch.no_grad()
    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Write one token (B, H, 1, D) into slot t mod M and read the memory with its query."""
        batch, heads, dim = self.shape
        expected = (batch, heads, 1, dim)
        fine = isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)
        if not (fine and q.shape == expected and k.shape == expected and v.shape == expected and q.is_floating_point()):
            self._check(q, k, v, "1")  # the full check, with its message (one-token steps skip it: it costs)
            if q.shape[2] != 1:
                raise GainCellError(f"step takes one token (seq dim 1), got {q.shape[2]}; use prefill for prompts")
        if self.config.attention == "softmax":
            self._write(k, v)
            return self._softmax_read(q)
        with torch.inference_mode():  # a step is ~40 tiny ops: skip autograd's bookkeeping on each
            readout, a, b = self._write_and_read(q, k, v)
        out = torch.addcmul(b[3], a[3], readout)  # outside inference mode: an ordinary tensor for the caller
        return out if out.dtype == q.dtype else out.to(q.dtype)

    def _write_and_read(self, q, k, v) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The chip's step: front end, write into slot t mod M, both products, ADCs. Returns the digital
        sum (B, H, 1, D) and the scalers' a and b (the output scaler is the caller's)."""
        batch, heads, dim = self.shape
        t, slot = self.length, self.length % self.config.window
        a, b, b_qkv, a_qkv = self._affine(q.dtype)
        pulses, stored = self._encode(q, k, v, a_qkv, b_qkv)
        if stored.dtype != self.keys.dtype:
            stored = stored.to(self.keys.dtype)
        self.keys[:, :, slot] = stored[0, :, :, 0]
        self.values[:, :, slot] = stored[1, :, :, 0]
        self.positions[slot] = t
        self.length += 1
        anchor = t // self.plan.block * self.plan.block  # the parallel op's block start: same decay split
        if self._anchor != anchor:
            self._build_stored(anchor)
        else:
            self._update_stored(stored, slot, anchor - t)
        generator = None
        if self.plan.read_noise:
            seed = int(torch.randint(0, 2**62, (1,)).item())
            generator = torch.Generator(device=pulses.device).manual_seed(seed)
        row = t - anchor + self.plan.block - 1  # the query's age t − a in the decay tables
        flat = pulses.reshape(batch * heads, 1, dim)
        readout = self._read(
            flat if flat.dtype == self.keys.dtype else flat.to(self.keys.dtype), self._band(t, anchor, row), row, generator
        )
        readout = readout.view(batch, heads, 1, dim)
        return (readout if readout.dtype == pulses.dtype else readout.to(pulses.dtype)), a, b

    def _encode(self, q, k, v, a_qkv, b_qkv) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`~gaincell.op.equations.front_end` for one token: pulses, and the stored k~ and v~ stacked
        (2, B, H, 1, D). q, k and v go through their scalers and quantisers as one stacked tensor
        (per-row bounds and steps: the same clamp, division, rounding and product as
        :func:`~gaincell.chip.periphery.quantize`), and the straight-through autograd function is skipped
        (generation needs no gradient)."""
        periphery = self.config.periphery
        grid = self._grid(q.dtype)
        x = torch.addcmul(b_qkv, a_qkv, torch.stack([q, k, v]))  # (3, B, H, 1, D)
        if grid is None:
            return quantize(x[0], periphery.q), quantize(x[1:], periphery.kv).sub_(periphery.offset)
        low, high, step = grid
        torch.clamp(x, low, high, out=x).div_(step).round_().mul_(step)
        return x[0], x[1:].sub_(periphery.offset)

    def _grid(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...] | None:
        """Bounds and steps of the q and k/v quantisers as (3, 1, 1, 1, 1) rows, when both round on
        SPEC's zero-origin grid (else None: :func:`quantize` per quantiser)."""
        q, kv = self.config.periphery.q, self.config.periphery.kv
        if q.levels is None or kv.levels is None or q.origin or kv.origin:
            return None
        if dtype not in self._grids:
            rows = [[q.low, kv.low, kv.low], [q.high, kv.high, kv.high], [q.step, kv.step, kv.step]]
            self._grids[dtype] = tuple(
                torch.tensor(r, dtype=dtype, device=self.keys.device).view(3, 1, 1, 1, 1) for r in rows
            )
        return self._grids[dtype]

    def _affine(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """All scalers' a and b as (4, H, 1, 1) in q, k, v, o order (Scalers.apply computes the same
        a·x + b), then b and a of q, k, v as (3, 1, H, 1, 1) for the stacked front end. Stacked once
        per sequence (reset / prefill start one) and again when a scaler changes in place (its
        tensor version moves; a write through ``.data`` does not move it and is seen at the next
        sequence)."""
        registered = self.scalers._parameters  # a dict look-up each, not nn.Module.__getattr__
        parameters = [registered[key] for key in _SCALER_KEYS]
        try:
            versions = tuple((id(p), p._version) for p in parameters)
        except RuntimeError:  # scalers made in inference mode keep no version: stack them every step
            versions = None
        cached = self._affine_cache
        if cached is None or versions is None or cached[0] != versions or cached[1] != dtype:
            half = len(parameters) // 2
            a, b = (torch.stack(parameters[i : i + half]).to(dtype)[:, :, None, None] for i in (0, half))
            cached = self._affine_cache = (versions, dtype, (a, b, b[:3, None], a[:3, None]))
        return cached[2]

    def _flat(self, stored: torch.Tensor) -> torch.Tensor:
        batch, heads, dim = self.shape
        return stored.view(batch * heads, self.config.window, dim)

    def _build_stored(self, anchor: int) -> None:
        """The stored side of both products for every slot, decayed to ``anchor`` (kept until it moves)."""
        features, plan = self.plan.features, self.plan
        key_age, bh = anchor - self.positions, self.shape[0] * self.shape[1]
        gain_k, gain_v = (None, None) if self._gains is None else (self._gains[:bh], self._gains[bh:])
        self._key_columns = stored_columns(features, plan, self._flat(self.keys), gain_k, key_age, ones=bool(plan.constant))
        self._value_columns = chunk_value_columns(features, plan, self._flat(self.values), gain_v, key_age)
        self._anchor, self._full_band = anchor, None

    def _update_stored(self, stored: torch.Tensor, slot: int, key_age: int) -> None:
        """Recompute the stored side of the slot just written, keys and values in one call (``stored``
        is the new k~ and v~, (2, B, H, 1, D))."""
        plan, features = self.plan, self.plan.features
        batch, heads, dim = self.shape
        bh = batch * heads
        gain = None if self._gains is None else self._gains[:, slot : slot + 1]
        row = key_age + plan.block - 1
        decays = self._age_decays[row : row + 1]  # what primitives.stored_columns computes for this age
        width = len(features) * dim
        by_chunk = self._value_columns.view(-1, bh, len(features), plan.chunk, dim)
        if self._powers is not None and gain is None:  # as Feature.scaled computes, straight into place
            y = stored.view(2, bh, 1, dim)
            powered = torch.cat([y if p == 1 else y**p for p in self._powers], dim=2)  # (2, BH, F, D)
            scales = self._age_scales[row].view(1, -1, 1)
            torch.mul(powered[0], scales, out=self._key_columns[:, slot, :width].view(bh, -1, dim))
            torch.mul(powered[1], scales, out=by_chunk[slot // plan.chunk, :, :, slot % plan.chunk])
            return  # the constant column of ones stays as _build_stored wrote it
        columns = stored.new_empty(2 * bh, 1, width + bool(plan.constant))
        if self._powers is not None:  # one multiply for all features, as Feature.scaled computes each
            y = stored.view(2 * bh, 1, 1, dim)
            powered = torch.cat([y if p == 1 else y**p for p in self._powers], dim=2)
            scales = self._age_scales[row].view(1, 1, -1, 1)
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
        self._key_columns[:, slot] = columns[:bh, 0]
        by_chunk[slot // plan.chunk, :, :, slot % plan.chunk] = columns[bh:, 0, :width].view(bh, len(features), dim)

    def _band(self, t: int, anchor: int, row: int) -> tuple[Band, torch.Tensor, bool]:
        """Which slots query t sees, with the occupancy of its sub-tiles in the band's chunk order
        and whether all are occupied. Kept between steps: with a full window only the query's age
        changes (the step passes it as ``row``); while it fills, only the number of occupied
        sub-tiles. (The step reads a band's ``fold``, ``chunk_subtile`` and ``occupied``;
        ``query_age``, ``key_age`` and ``valid`` are those of the step it was made at.)"""
        if self.length < self.config.window:
            return self._filling_band(anchor, row)
        if self._full_band is None:
            query = torch.tensor([t], device=self.positions.device)
            band = make_band(self.plan, query, self.positions, anchor, self.chunk_subtile)
            self._full_band = (band, self._in_chunk_order(band), bool(band.occupied.all()))
        return self._full_band

    def _filling_band(self, anchor: int, row: int) -> tuple[Band, torch.Tensor, bool]:
        """make_band's result while the window fills: slots 0..t hold positions 0..t in order (a
        memory fills from empty), so the rest are the one edge nobody sees (:meth:`_read` hides it),
        and sub-tile s is occupied once its first slot s·R is written: one band per count of them."""
        count = -(-self.length // self.config.subtile_rows)
        if count not in self._filling_bands:
            valid = (self.positions >= 0)[None]
            occupied = (self._subtile_starts < self.length)[:, None]
            band = Band(self._ages[row : row + 1], anchor - self.positions, valid, self.chunk_subtile, occupied)
            band.fold = band_fold(self.chunk_subtile.tolist())
            self._filling_bands[count] = (band, self._in_chunk_order(band), bool(occupied.all()))
        return self._filling_bands[count]

    @staticmethod
    def _in_chunk_order(band: Band) -> torch.Tensor:
        """The band's sub-tile occupancy in the order the folded read-out lists sub-tiles."""
        return band.occupied if band.fold is None else band.occupied[band.chunk_subtile[: band.fold]]

    def _read(self, pulses: torch.Tensor, bands: tuple[Band, torch.Tensor, bool], row: int, generator) -> torch.Tensor:
        """:func:`~gaincell.op.kernels.primitives.analog_read` on the kept stored side: the same steps in the
        same order. ``row`` indexes the query's age t − a in the decay tables."""
        plan, (band, in_order, all_occupied) = self.plan, bands
        decays = self._age_decays[row : row + 1]  # primitives.query_rows, with decays from the table
        filling = self.length < self.config.window
        scores = first_product(plan, self._query_rows(pulses, decays), self._key_columns, band, generator, self._scratch)
        if filling:  # slots from ``length`` on are empty: S = −1, no pulse (primitives' hiding on that edge)
            scores[:, self.length :].fill_(-1.0)
        widths = scores.clamp_(0.0, plan.s_sat)
        if band.fold == self.config.window // plan.chunk and not plan.read_noise:
            readout, occupied = self._one_query_readout(widths, self._readout_scales[row : row + 1]), in_order
        else:
            readout, occupied = second_product(plan, widths, decays, self._value_columns, band, generator, self._scratch)
        digital = pulses.new_empty(pulses.shape)
        adc_sum(plan, readout, occupied, digital, self._scratch, all_occupied=all_occupied)
        return digital

    def _query_rows(self, pulses: torch.Tensor, decays: torch.Tensor) -> torch.Tensor:
        """primitives.query_rows for one query, written into a kept buffer: [λ^(p_f·(t−a)) Q]_f and the constant column."""
        plan, (bh, _, dim) = self.plan, pulses.shape
        width = decays.shape[1] * dim
        rows = self._scratch("rows", pulses, bh, 1, width + bool(plan.constant))
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
        weights = self._scratch("one_query_weights", widths, chunks, bh, scales.shape[1], g)
        torch.mul(by_chunk[:, :, None, :], scales.view(1, 1, -1, 1), out=weights)
        weights = weights.view(chunks * bh, 1, -1)
        if plan.constant:
            charge = by_chunk.sum(-1) * (plan.constant * plan.readout_gain / plan.s_sat)
            partial = torch.baddbmm(charge.view(chunks * bh, 1, 1), weights, self._value_columns)
        else:
            partial = torch.bmm(weights, self._value_columns)
        return partial.view(chunks, bh, 1, -1)

    def _softmax_read(self, q: torch.Tensor) -> torch.Tensor:
        valid = (self.positions >= 0)[None, None, None, :]
        return torch.nn.functional.scaled_dot_product_attention(
            q, self.keys.to(q.dtype), self.values.to(q.dtype), attn_mask=valid
        )
