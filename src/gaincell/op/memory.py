"""The gain-cell KV memory a layer uses in generation: what the chip does token by token (SPEC §3.6).

Per head, M physical slots. At step t the new token's k, v (after scalers, clamp, quantisation)
are written into slot t mod M, overwriting the oldest; the query reads every written slot through
the same analog products as the parallel op. Leakage is exact: a stored value written at step n
is read at step t as λ^(t−n) of its offset voltage (every stored value ages one step per token),
computed from its age rather than by repeated multiplication, so no rounding drift accumulates.
This module keeps the state (slots, positions, when the stored side is stale); the step's arithmetic
is :mod:`gaincell.op.kernels.step`, the prompt's the parallel op. Where the dispatcher picks the fused
kernels (CUDA; :mod:`gaincell.op.kernels.dispatch`), a step is the front end, the write, and one launch
of the fused forward kernel over the slots (:func:`~gaincell.op.kernels.fused_step.fused_step_readout`): a
decode step on a GPU is bound by how many operations it launches, and the torch step takes about 100
per layer (device run, part c).
"""

from __future__ import annotations

import warnings

import torch

from gaincell.chip.cells import CellGains
from gaincell.chip.config import GainCellConfig
from gaincell.errors import GainCellError
from gaincell.op.attention import check_qkv, gain_cell_attention
from gaincell.op.equations import front_end
from gaincell.op.kernels.dispatch import choose_kernel
from gaincell.op.kernels.fused_step import fused_step_front_end, fused_step_readout
from gaincell.op.kernels.softmax import sliding_window_softmax_step
from gaincell.op.kernels.step import StepKernel, encode, quantizer_grid, stacked_scalers
from gaincell.op.normaliser import divide, ones_value
from gaincell.op.scalers import Scalers
from gaincell.validation import check_int


class GainCellMemory:
    """M slots of stored keys and values for one layer, all heads and a batch of sequences.

    ``step(q_t, k_t, v_t)`` takes the raw (pre-scaler) projections of one new token, shape
    (B, H, 1, D), and returns what :func:`~gaincell.op.attention.gain_cell_attention` returns at that
    position. ``prefill`` runs a whole prompt through the parallel op and keeps its last M tokens.
    The softmax preset keeps raw keys and values and reads them with windowed softmax. ``kernel``
    (``auto`` | ``torch`` | ``triton``; None: the process default) picks the form of the steps and the
    prefill once, for this memory's device, dtype and config (``form``).
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
        kernel: str | None = None,
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
        self._anchor: int | None = None  # the anchor the kernel's stored side was built for (None: stale)
        self.form, self._fused_ran = "torch", False
        if config.attention != "softmax":
            self.form = choose_kernel(
                kernel, self.keys.device, gains=gains is not None, read_noise=config.noise.read_noise, config=config,
                dtype=dtype,
            )  # fmt: skip
            self.kernel = StepKernel(config, self.shape, gains, device, dtype)
            self.plan = self.kernel.plan
            self.ones_kernel = None  # the normaliser's column: every value the constant (gaincell.op.normaliser)
            self._ones = ones_value(config)
            if config.periphery.normaliser:
                self.ones_kernel = StepKernel(config, self.shape, gains, device, dtype, ones=True)
            self._affine_cache: tuple | None = None  # see stacked_scalers
            self._grids: dict[torch.dtype, tuple[torch.Tensor, ...] | None] = {}

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
        out = gain_cell_attention(q, k, v, self.scalers, self.config, gains=self.gains, kernel=self.form)
        self._affine_cache = None
        keep = min(q.shape[2], self.config.window)
        self.length = q.shape[2] - keep
        if self.config.attention == "softmax":
            self._write(k[:, :, -keep:], v[:, :, -keep:])
        else:
            recent = (_compute_dtype(x[:, :, -keep:]) for x in (q, k, v))
            _, keys, values = front_end(*recent, self.scalers, self.config)
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
            return sliding_window_softmax_step(q, self.keys, self.values, self.positions)
        dtype = q.dtype
        with torch.inference_mode():  # a step is ~40 tiny ops: skip autograd's bookkeeping on each
            readout = None
            if self.form == "triton":  # the fused kernels cast what they load: no float32 copies first
                readout, a_o, b_o = self._fused_step(q, k, v)
            if readout is None:
                readout, a_o, b_o = self._write_and_read(*(_compute_dtype(x) for x in (q, k, v)))
        out = torch.addcmul(b_o, a_o, readout)  # outside inference mode: an ordinary tensor for the caller
        return out if out.dtype == dtype else out.to(dtype)

    def _write_and_read(self, q, k, v) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The chip's step: front end, write into slot t mod M, both products, ADCs. Returns the digital
        sum (B, H, 1, D) and the output scaler's a and b (applying it is the caller's)."""
        batch, heads, dim = self.shape
        t, slot = self.length, self.length % self.config.window
        self._affine_cache = stacked_scalers(self.scalers, q.dtype, self._affine_cache)
        _, _, b_qkv, a_qkv, a_o, b_o = self._affine_cache[2]
        pulses, stored = encode(self.config.periphery, self._grid(q.dtype), q, k, v, a_qkv, b_qkv)
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
            self.kernel.write(stored, slot, anchor - t)
            if self.ones_kernel is not None:
                self.ones_kernel.write(torch.stack([stored[0], torch.full_like(stored[1], self._ones)]), slot, anchor - t)
        seed = int(torch.randint(0, 2**62, (1,)).item()) if self.plan.read_noise else None
        row = t - anchor + self.plan.block - 1  # the query's age t − a in the kernel's decay tables
        flat = pulses.reshape(batch * heads, 1, dim)
        flat = flat if flat.dtype == self.keys.dtype else flat.to(self.keys.dtype)
        readout = self._read(self.kernel, flat, t, anchor, row, seed)
        if self.ones_kernel is not None:  # the same pulses and S noise, the ones column's read-out: divide
            readout = divide(readout, self._read(self.ones_kernel, flat, t, anchor, row, seed)[..., :1])
        readout = readout.view(batch, heads, 1, dim)
        return (readout if readout.dtype == pulses.dtype else readout.to(pulses.dtype)), a_o, b_o

    def _fused_step(self, q, k, v):
        """:meth:`_write_and_read_fused`; a memory's first fused step that fails (a Triton build this GPU or
        Triton version refuses) turns the memory to the torch step with one warning naming the error, rather
        than failing the generation: it returns (None, None, None) with the memory as before the call. Once
        a fused step has run, failures raise."""
        if self._fused_ran:
            return self._write_and_read_fused(q, k, v)
        length, slot = self.length, self.length % self.config.window
        position = int(self.positions[slot])
        try:
            found = self._write_and_read_fused(q, k, v)
        except Exception as error:  # the first use only: what building the kernels on this device can raise
            self.length, self.form = length, "torch"
            self.positions[slot] = position
            warnings.warn(
                f"gain-cell memory: the fused generation step failed on its first use ({type(error).__name__}: "
                f"{str(error).strip()[:200]}); this memory steps with the torch form (same outputs, more launches)",
                RuntimeWarning,
                stacklevel=3,
            )
            return None, None, None
        self._fused_ran = True
        return found

    def _write_and_read_fused(self, q, k, v) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_write_and_read` through the fused kernels: the front end and the write into slot t mod M in
        one launch (:func:`~gaincell.op.kernels.fused_step.fused_step_front_end`; the torch front end where a
        quantiser is off SPEC's zero-origin grid), then one launch that reads every slot from k~ and v~ as
        stored (no stored side kept between steps). The raw q, k, v in any float dtype."""
        t, slot = self.length, self.length % self.config.window
        self._affine_cache = stacked_scalers(self.scalers, torch.float32, self._affine_cache)
        a, b, b_qkv, a_qkv, a_o, b_o = self._affine_cache[2]
        grid = self._grid(torch.float32)
        if grid is None:
            q, k, v = (x.float() for x in (q, k, v))
            pulses, stored = encode(self.config.periphery, grid, q, k, v, a_qkv, b_qkv)
            self.keys[:, :, slot] = stored[0, :, :, 0]
            self.values[:, :, slot] = stored[1, :, :, 0]
        else:
            pulses = fused_step_front_end(q, k, v, a, b, self.keys, self.values, slot, self.config)
        self.positions[slot] = t
        self.length += 1
        self._anchor = None  # the torch step's stored side (unused here) is stale
        return fused_step_readout(pulses, self.keys, self.values, t, self.config), a_o, b_o

    def _read(self, kernel: StepKernel, pulses: torch.Tensor, t: int, anchor: int, row: int, seed: int | None):
        """One kernel's read of the memory with query pulses (BH, 1, D); ``seed`` fixes its read noise."""
        generator = None if seed is None else torch.Generator(device=pulses.device).manual_seed(seed)
        bands = kernel.band(t, self.positions, self.length, anchor, row)
        return kernel.read(pulses, bands, row, self.length, generator)

    def _grid(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...] | None:
        """The stacked front end's quantiser rows for ``dtype``, made once (see quantizer_grid)."""
        if dtype not in self._grids:
            self._grids[dtype] = quantizer_grid(self.config.periphery, dtype, self.keys.device)
        return self._grids[dtype]

    def _build_stored(self, anchor: int) -> None:
        """Have the kernel rebuild the stored side of every slot, decayed to ``anchor`` (kept until it moves)."""
        self.kernel.build(self.keys, self.values, self.positions, anchor)
        if self.ones_kernel is not None:
            self.ones_kernel.build(self.keys, torch.full_like(self.values, self._ones), self.positions, anchor)
        self._anchor = anchor


def _compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 inputs as float32, as :func:`~gaincell.op.attention.gain_cell_attention` computes them: the
    quantisers and the ADC round, so the chip's arithmetic must be exact to a step (others as they are)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
