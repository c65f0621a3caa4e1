"""The gain-cell KV memory a layer uses in generation: what the chip does token by token (SPEC §3.6).

Per head, M physical slots. At step t the new token's k, v (after scalers, clamp, quantisation)
are written into slot t mod M, overwriting the oldest; the query reads every written slot through
the same analog products as the parallel op. Leakage is exact: a stored value written at step n
is read at step t as λ^(t−n) of its offset voltage (every stored value ages one step per token),
computed from its age rather than by repeated multiplication, so no rounding drift accumulates.
"""

from __future__ import annotations

import torch

from gaincell.attention import check_qkv, gain_cell_attention
from gaincell.cells import CellGains
from gaincell.config import GainCellConfig
from gaincell.equations import front_end
from gaincell.errors import GainCellError
from gaincell.kernels.banded import analog_read, make_band, make_plan
from gaincell.scalers import Scalers


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
        if config.attention != "softmax":
            self.plan = make_plan(config, gains is not None)
            starts = torch.arange(0, window, self.plan.chunk, device=device)
            self.chunk_subtile = starts // config.subtile_rows

    def reset(self) -> None:
        """Forget everything (a new sequence): slots are marked empty, nothing is read from them."""
        self.keys.zero_()
        self.values.zero_()
        self.positions.fill_(-1)
        self.length = 0

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
            _, keys, values = front_end(q[:, :, -keep:], k[:, :, -keep:], v[:, :, -keep:], self.scalers, self.config)
            self._write(keys, values)
        return out

    @torch.no_grad()
    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Write one token (B, H, 1, D) into slot t mod M and read the memory with its query."""
        self._check(q, k, v, "1")
        if q.shape[2] != 1:
            raise GainCellError(f"step takes one token (seq dim 1), got {q.shape[2]}; use prefill for prompts")
        t = self.length
        if self.config.attention == "softmax":
            self._write(k, v)
            return self._softmax_read(q)
        pulses, keys, values = front_end(q, k, v, self.scalers, self.config)
        self._write(keys, values)
        anchor = t // self.plan.block * self.plan.block  # the parallel op's block start: same decay split
        query = torch.tensor([t], device=self.positions.device)
        band = make_band(self.plan, query, self.positions, anchor, self.chunk_subtile)
        batch, heads, dim = self.shape
        flat = batch * heads
        gain_k = gain_v = None
        if self.gains is not None:
            gain_k = self.gains.key.to(pulses.dtype).expand(batch, -1, -1, -1).reshape(flat, -1, dim)
            gain_v = self.gains.value.to(pulses.dtype).expand(batch, -1, -1, -1).reshape(flat, -1, dim)
        generator = None
        if self.plan.read_noise:
            seed = int(torch.randint(0, 2**62, (1,)).item())
            generator = torch.Generator(device=pulses.device).manual_seed(seed)
        readout = analog_read(
            self.plan,
            pulses.reshape(flat, 1, dim),
            self.keys.to(pulses.dtype).reshape(flat, -1, dim),
            self.values.to(pulses.dtype).reshape(flat, -1, dim),
            gain_k,
            gain_v,
            band,
            generator,
        )
        return self.scalers.apply("o", readout.view(batch, heads, 1, dim)).to(q.dtype)

    def _softmax_read(self, q: torch.Tensor) -> torch.Tensor:
        valid = (self.positions >= 0)[None, None, None, :]
        return torch.nn.functional.scaled_dot_product_attention(
            q, self.keys.to(q.dtype), self.values.to(q.dtype), attn_mask=valid
        )
