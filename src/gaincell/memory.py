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

from gaincell.attention import (
    Band,
    CellGains,
    Scalers,
    _adc,
    _columns,
    _rows,
    _scores,
    _Scratch,
    _subtile_readout,
    _value_columns,
    check_qkv,
    encode,
    gain_cell_attention,
    make_band,
    make_plan,
)
from gaincell.config import GainCellConfig
from gaincell.errors import GainCellError
from gaincell.periphery import quantize


class GainCellMemory:
    """M slots of stored keys and values for one layer, all heads and a batch of sequences.

    ``step(q_t, k_t, v_t)`` takes the raw (pre-scaler) projections of one new token, shape
    (B, H, 1, D), and returns what :func:`~gaincell.attention.gain_cell_attention` returns at that
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
            if not isinstance(value, int) or value < 1:
                raise GainCellError(f"{name} must be an integer >= 1, got {value!r}")
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
        self._full_band: Band | None = None  # the band of a full window, for ``_anchor``
        if config.attention != "softmax":
            self.plan = make_plan(config, gains is not None)
            starts = torch.arange(0, window, self.plan.chunk, device=device)
            self.chunk_subtile = starts // config.subtile_rows
            self._scratch = _Scratch()
            self._gain_k = self._gain_v = None
            if gains is not None:
                flat = batch * n_heads
                self._gain_k = gains.key.to(dtype).expand(batch, -1, -1, -1).reshape(flat, window, head_dim)
                self._gain_v = gains.value.to(dtype).expand(batch, -1, -1, -1).reshape(flat, window, head_dim)

    def reset(self) -> None:
        """Forget everything (a new sequence): slots are marked empty, nothing is read from them."""
        self.keys.zero_()
        self.values.zero_()
        self.positions.fill_(-1)
        self.length = 0
        self._anchor = None

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
        keep = min(q.shape[2], self.config.window)
        self.length = q.shape[2] - keep
        if self.config.attention == "softmax":
            self._write(k[:, :, -keep:], v[:, :, -keep:])
        else:
            _, keys, values = encode(q[:, :, -keep:], k[:, :, -keep:], v[:, :, -keep:], self.scalers, self.config)
            self._write(keys, values)
        return out

    @torch.no_grad()
    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Write one token (B, H, 1, D) into slot t mod M and read the memory with its query."""
        self._check(q, k, v, "1")
        if q.shape[2] != 1:
            raise GainCellError(f"step takes one token (seq dim 1), got {q.shape[2]}; use prefill for prompts")
        if self.config.attention == "softmax":
            self._write(k, v)
            return self._softmax_read(q)
        t, slot = self.length, self.length % self.config.window
        pulses, keys, values = self._encode(q, k, v)
        self.keys[:, :, slot] = keys[:, :, 0].to(self.keys.dtype)
        self.values[:, :, slot] = values[:, :, 0].to(self.values.dtype)
        self.positions[slot] = t
        self.length += 1
        anchor = t // self.plan.block * self.plan.block  # the parallel op's block start: same decay split
        if self._anchor != anchor:
            self._build_stored(anchor)
        else:
            self._update_stored(slot, anchor - t)
        batch, heads, dim = self.shape
        generator = None
        if self.plan.read_noise:
            seed = int(torch.randint(0, 2**62, (1,)).item())
            generator = torch.Generator(device=pulses.device).manual_seed(seed)
        readout = self._read(pulses.to(self.keys.dtype).reshape(batch * heads, 1, dim), self._band(t, anchor), generator)
        return self.scalers.apply("o", readout.view(batch, heads, 1, dim).to(pulses.dtype)).to(q.dtype)

    def _encode(self, q, k, v):
        """:func:`~gaincell.attention.encode` without its straight-through autograd function, which
        costs more than the rest of a one-token step; generation needs no gradient."""
        periphery = self.config.periphery
        pulses = quantize(self.scalers.apply("q", q), periphery.q)
        keys = quantize(self.scalers.apply("k", k), periphery.kv).sub_(periphery.offset)
        values = quantize(self.scalers.apply("v", v), periphery.kv).sub_(periphery.offset)
        return pulses, keys, values

    def _flat(self, stored: torch.Tensor) -> torch.Tensor:
        batch, heads, dim = self.shape
        return stored.view(batch * heads, self.config.window, dim)

    def _build_stored(self, anchor: int) -> None:
        """The stored side of both products for every slot, decayed to ``anchor`` (kept until it moves)."""
        features, plan = self.plan.features, self.plan
        key_age = anchor - self.positions
        self._key_columns = _columns(features, plan, self._flat(self.keys), self._gain_k, key_age, ones=bool(plan.constant))
        self._value_columns = _value_columns(features, plan, self._flat(self.values), self._gain_v, key_age)
        self._anchor, self._full_band = anchor, None

    def _update_stored(self, slot: int, key_age: int) -> None:
        """Recompute the stored side of the one slot just written (keys and values in one call)."""
        plan, features = self.plan, self.plan.features
        flat_keys, flat_values = self._flat(self.keys), self._flat(self.values)
        bh, dim = flat_keys.shape[0], flat_keys.shape[2]
        stored = torch.cat([flat_keys[:, slot : slot + 1], flat_values[:, slot : slot + 1]])
        gain = None
        if self._gain_k is not None:
            gain = torch.cat([self._gain_k[:, slot : slot + 1], self._gain_v[:, slot : slot + 1]])
        age = torch.full((1,), key_age, dtype=torch.long, device=stored.device)
        columns = _columns(features, plan, stored, gain, age, ones=bool(plan.constant))
        self._key_columns[:, slot] = columns[:bh, 0]
        width = len(features) * dim
        by_chunk = self._value_columns.view(-1, bh, len(features), plan.chunk, dim)
        by_chunk[slot // plan.chunk, :, :, slot % plan.chunk] = columns[bh:, 0, :width].view(bh, len(features), dim)

    def _band(self, t: int, anchor: int) -> Band:
        """Which slots query t sees; with a full window only its age from the anchor changes."""
        query = torch.tensor([t], device=self.positions.device)
        if self.length < self.config.window:
            return make_band(self.plan, query, self.positions, anchor, self.chunk_subtile)
        if self._full_band is None:
            self._full_band = make_band(self.plan, query, self.positions, anchor, self.chunk_subtile)
        self._full_band.query_age = query - anchor
        return self._full_band

    def _read(self, pulses: torch.Tensor, band: Band, generator) -> torch.Tensor:
        """:func:`~gaincell.attention.analog_read` on the kept stored side: the same steps in the same order."""
        plan = self.plan
        rows, decays = _rows(plan.features, plan, pulses, band.query_age, plan.constant)
        scores = _scores(plan, rows, self._key_columns, band, generator, self._scratch)
        widths = scores.clamp_(0.0, plan.s_sat)
        readout, occupied = _subtile_readout(plan, widths, decays, self._value_columns, band, generator, self._scratch)
        digital = pulses.new_empty(pulses.shape)
        _adc(plan, readout, occupied, digital, self._scratch)
        return digital

    def _softmax_read(self, q: torch.Tensor) -> torch.Tensor:
        valid = (self.positions >= 0)[None, None, None, :]
        return torch.nn.functional.scaled_dot_product_attention(
            q, self.keys.to(q.dtype), self.values.to(q.dtype), attn_mask=valid
        )
