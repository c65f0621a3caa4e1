"""The gain-cell attention op (SPEC §3), for (B, H, T, D) tensors.

Read top to bottom it is the circuit: per-head scalers, clamps and quantisers (the front end,
:func:`encode`), the first analog product with leakage, the charge-to-pulse converter that replaces
softmax, the second analog product, one ADC per sub-tile, the digital sum, the output scaler.

Speed and memory. A query only sees the last M keys, so queries are processed in blocks against
their band of at most M + block keys: time O(T·M·D), never a T×T tensor. The backward pass
recomputes each block instead of storing it (as FlashAttention does), so memory is O(T·D + block·M)
for training too. With leakage the score is a sum of one matmul per polynomial power (the power i
decays as λ^(i·age)); without leakage the powers fold into one matmul with g(k~) (SPEC §3.4 note).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gaincell.cells import build_cell
from gaincell.config import GainCellConfig
from gaincell.errors import GainCellError
from gaincell.periphery import charge_to_pulse, charge_to_pulse_slope, in_range, quantize, quantize_ste


class Scalers(nn.Module):
    """Per-head affine maps before the arrays (q, k, v) and after the ADC (output), SPEC §3.2–3.3.

    Initial values as the paper: a = 1, b_q = 0, b_k = b_v = the cell offset (0.45 V), b_o = 0.
    """

    names = ("q", "k", "v", "o")

    def __init__(self, n_heads: int, offset: float = 0.45):
        super().__init__()
        if not isinstance(n_heads, int) or n_heads < 1:
            raise GainCellError(f"n_heads must be an integer >= 1, got {n_heads!r}")
        self.n_heads = n_heads
        for name in self.names:
            bias = offset if name in ("k", "v") else 0.0
            self.register_parameter(f"a_{name}", nn.Parameter(torch.ones(n_heads)))
            self.register_parameter(f"b_{name}", nn.Parameter(torch.full((n_heads,), bias)))

    def apply(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """a · x + b with one (a, b) per head; x is (B, H, T, D)."""
        a = getattr(self, f"a_{name}").to(x.dtype)[:, None, None]
        b = getattr(self, f"b_{name}").to(x.dtype)[:, None, None]
        return a * x + b


@dataclass(frozen=True)
class CellGains:
    """Per-cell gain factors of one simulated chip (SPEC §3.5 variability), (H, M, D) per array.

    Multiplies each cell's charge; indexed by physical slot n mod M, so a token written into a slot
    inherits that slot's cells. Fixed per chip: sample once per layer from a seed.
    """

    key: torch.Tensor
    value: torch.Tensor

    @classmethod
    def sample(
        cls, config: GainCellConfig, n_heads: int, head_dim: int, layer: int = 0, device=None
    ) -> CellGains | None:
        """Gains 1 + σ·N(0, 1) from ``config.noise``; None when variability is off."""
        sigma = config.noise.variability
        if sigma == 0:
            return None
        generator = torch.Generator().manual_seed(config.noise.seed * 100_003 + layer)
        shape = (2, n_heads, config.window, head_dim)
        gains = 1 + sigma * torch.randn(shape, generator=generator, dtype=torch.float64)
        gains = gains.to(device=device, dtype=torch.float32)
        return cls(gains[0], gains[1])

    def at_positions(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gains of the cells that hold tokens at ``positions`` (slot = position mod M): (H, T, D)."""
        slots = positions % self.key.shape[1]
        return self.key[:, slots], self.value[:, slots]


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int | None = None) -> None:
    """Fail with the expected layout instead of letting a matmul broadcast wrong shapes."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise GainCellError(f"{name} must be a torch.Tensor of shape (batch, heads, seq, head_dim)")
        if x.dim() != 4:
            raise GainCellError(
                f"{name} must have shape (batch, heads, seq, head_dim), got {tuple(x.shape)} ({x.dim()}-D)"
            )
        if not x.is_floating_point():
            raise GainCellError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if not (q.shape == k.shape == v.shape):
        raise GainCellError(
            "q, k, v must have the same shape (batch, heads, seq, head_dim), got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if n_heads is not None and q.shape[1] != n_heads:
        raise GainCellError(f"q has {q.shape[1]} heads in dim 1 but the scalers have {n_heads}")


def encode(q, k, v, scalers: Scalers, config: GainCellConfig):
    """Front end (SPEC §3.2): scalers, clamp + quantise (STE), offsets. Returns (Q, k~, v~)."""
    periphery = config.periphery
    pulses = quantize_ste(scalers.apply("q", q), periphery.q)
    keys = quantize_ste(scalers.apply("k", k), periphery.kv) - periphery.offset
    values = quantize_ste(scalers.apply("v", v), periphery.kv) - periphery.offset
    return pulses, keys, values


def gain_cell_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scalers: Scalers | None,
    config: GainCellConfig,
    *,
    gains: CellGains | None = None,
    noise_seed: int | None = None,
) -> torch.Tensor:
    """Causal sliding-window attention of SPEC §3 on (B, H, T, D) tensors; returns (B, H, T, D).

    ``config.attention == "softmax"`` gives the software baseline (§3.1, scalers unused); otherwise
    the gain-cell model (§3.2–3.5) with ``config.cell`` (linear §3.3, paper polynomial §3.4, …).
    ``gains`` is a chip's cell variability; ``noise_seed`` fixes read noise (drawn from torch's
    RNG when None, so each call gets fresh noise reproducible under ``torch.manual_seed``).
    """
    check_qkv(q, k, v, None if scalers is None else scalers.n_heads)
    if config.attention == "softmax":
        return sliding_window_softmax(q, k, v, config.window, config.block_size)
    if scalers is None:
        raise GainCellError("scalers are required for gain-cell attention (use Scalers(n_heads))")
    dtype = q.dtype
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    q, k, v = q.to(compute), k.to(compute), v.to(compute)
    pulses, keys, values = encode(q, k, v, scalers, config)
    batch, heads, length, dim = q.shape
    gain_k = gain_v = None
    if gains is not None:
        gain_k, gain_v = gains.at_positions(torch.arange(length, device=q.device))
        gain_k = gain_k.to(compute).expand(batch, -1, -1, -1).reshape(batch * heads, length, dim)
        gain_v = gain_v.to(compute).expand(batch, -1, -1, -1).reshape(batch * heads, length, dim)
    if config.noise.read_noise > 0 and noise_seed is None:
        noise_seed = int(torch.randint(0, 2**62, (1,)).item())
    plan = make_plan(config, gains is not None)
    flat = [x.reshape(batch * heads, length, dim) for x in (pulses, keys, values)]
    readout = _BandedAnalogCore.apply(*flat, gain_k, gain_v, plan, noise_seed)
    return scalers.apply("o", readout.view(batch, heads, length, dim)).to(dtype)


def sliding_window_softmax(q, k, v, window: int, block_size: int = 128) -> torch.Tensor:
    """Softmax attention (scale D^-1/2) masked to the causal window, banded like the gain-cell op.

    Each query block is checkpointed, so training memory stays O(T·D + block·M) here too.
    """
    length = q.shape[2]
    outputs = []
    for start in range(0, length, block_size):
        stop = min(start + block_size, length)
        first = max(0, start - window + 1)
        query_pos = torch.arange(start, stop, device=q.device)[:, None]
        key_pos = torch.arange(first, stop, device=q.device)[None, :]
        age = query_pos - key_pos
        mask = (age >= 0) & (age < window)
        block = (q[:, :, start:stop], k[:, :, first:stop], v[:, :, first:stop], mask)
        if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
            outputs.append(torch.utils.checkpoint.checkpoint(_softmax_block, *block, use_reentrant=False))
        else:
            outputs.append(_softmax_block(*block))
    return torch.cat(outputs, dim=2)


def _softmax_block(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# --- the banded analog core -----------------------------------------------------------------------


@dataclass(frozen=True)
class Feature:
    """One matmul of the analog products: a polynomial φ of the stored offset, decaying as λ^(power·age).

    The score is S = Σ_f λ^(f.power·age) ∘ (Q · φ_f(k~)ᵀ) (+ the constant term), and likewise the
    second product. With leakage there is one feature per power of g; without, a single φ = g − g(0).
    """

    power: int
    coefficients: tuple[float, ...]

    def value(self, y: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(y)
        for c in reversed(self.coefficients):
            out = out * y + c
        return out

    def slope(self, y: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(y)
        for i in range(len(self.coefficients) - 1, 0, -1):
            out = out * y + i * self.coefficients[i]
        return out


@dataclass(frozen=True)
class Plan:
    """Everything the kernel needs from a config, computed once (configs are frozen and hashable).

    ``grad_features`` / ``grad_constant`` describe the model whose derivative the backward pass
    uses: the cell itself (exact) or the linear cell α·y (surrogate, SPEC §3.4).
    """

    features: tuple[Feature, ...]
    constant: float
    grad_features: tuple[Feature, ...]
    grad_constant: float
    leakage: float
    window: int
    subtile_rows: int
    chunk: int
    n_subtiles: int
    block: int
    s_sat: float
    readout_gain: float
    adc: object
    read_noise: float
    adc_high: float


def _features(coefficients: tuple[float, ...], leakage: float, with_gains: bool):
    """Group g's powers by their leakage exponent; the constant term is a cheap row-sum unless gains apply."""
    constant = 0.0 if with_gains else coefficients[0]
    start = 0 if with_gains else 1
    if leakage == 0:
        folded = (0.0,) * start + tuple(coefficients[start:])
        has_terms = any(c != 0 for c in folded)
        return ((Feature(0, folded),) if has_terms else ()), constant
    features = []
    for power in range(start, len(coefficients)):
        if coefficients[power] != 0:
            features.append(Feature(power, (0.0,) * power + (coefficients[power],)))
    return tuple(features), constant


@functools.lru_cache(maxsize=64)
def make_plan(config: GainCellConfig, with_gains: bool) -> Plan:
    cell = build_cell(config.cell)
    features, constant = _features(cell.coefficients, config.leakage, with_gains)
    if config.gradient == "surrogate" and not cell.is_linear:
        grad_features, grad_constant = _features((0.0, cell.alpha), config.leakage, with_gains)
    else:
        grad_features, grad_constant = features, constant
    chunk = math.gcd(config.window, config.subtile_rows)
    block = max(chunk, config.block_size // chunk * chunk)
    return Plan(
        features=features,
        constant=constant,
        grad_features=grad_features,
        grad_constant=grad_constant,
        leakage=config.leakage,
        window=config.window,
        subtile_rows=config.subtile_rows,
        chunk=chunk,
        n_subtiles=config.n_subtiles,
        block=block,
        s_sat=config.periphery.s_sat,
        readout_gain=config.periphery.readout_gain,
        adc=config.periphery.adc,
        read_noise=config.noise.read_noise,
        adc_high=config.periphery.adc.high,
    )


@dataclass
class Band:
    """Which stored keys a group of queries reads, and how much each has leaked.

    Ages are split at an anchor a (a block boundary): age = (t − a) + (a − n), so the decay
    λ^(p·age) = λ^(p·(t−a)) · λ^(p·(a−n)) scales query rows and key rows separately and the leaked
    score stays one matmul (no (queries, keys) decay table). Keys come in chunks of g = gcd(M, R)
    consecutive tokens; every chunk lies in one physical sub-tile (``chunk_subtile``).
    """

    query_age: torch.Tensor  # (queries,) t − a
    key_age: torch.Tensor  # (keys,) a − n
    valid: torch.Tensor  # (queries, keys) bool: written and 0 <= age < M
    chunk_subtile: torch.Tensor  # (keys // g,) physical sub-tile of each chunk
    occupied: torch.Tensor  # (n_subtiles, queries) bool: the sub-tile holds a visible token


def make_band(plan: Plan, query_positions, key_positions, anchor: int, chunk_subtile) -> Band:
    """A :class:`Band` for queries at ``query_positions`` reading keys at ``key_positions`` (−1: empty)."""
    age = query_positions[:, None] - key_positions[None, :]
    valid = (age >= 0) & (age < plan.window) & (key_positions >= 0)[None, :]
    queries, keys = valid.shape
    per_chunk = valid.view(queries, keys // plan.chunk, plan.chunk).any(-1).to(torch.int32)
    occupied = torch.zeros(plan.n_subtiles, queries, dtype=torch.int32, device=valid.device)
    occupied.index_add_(0, chunk_subtile, per_chunk.T)
    return Band(query_positions - anchor, anchor - key_positions, valid, chunk_subtile, occupied > 0)


def _decay(plan: Plan, power: int, age: torch.Tensor, dtype) -> torch.Tensor:
    if plan.leakage == 0 or power == 0:
        return torch.ones(age.shape, dtype=dtype, device=age.device)
    return torch.exp(-plan.leakage * power * age.to(torch.float64)).to(dtype)


def _rows(features, plan: Plan, pulses, band: Band):
    """Query side of the factorised products: [λ^(p_f·(t−a)) Q]_f, (BH, Q, F·D), and the scales (Q, F)."""
    scales = torch.stack([_decay(plan, f.power, band.query_age, pulses.dtype) for f in features], dim=1)
    rows = (pulses[:, :, None, :] * scales[None, :, :, None]).flatten(2)
    return rows, scales


def _columns(features, plan: Plan, stored, gain, band: Band):
    """Stored side: [λ^(p_f·(a−n)) φ_f(y~) (· gain)]_f, (BH, L, F·D)."""
    parts = []
    for feature in features:
        part = feature.value(stored) * _decay(plan, feature.power, band.key_age, stored.dtype)[:, None]
        parts.append(part if gain is None else part * gain)
    return torch.cat(parts, dim=2)


def _column_slopes(features, plan: Plan, stored, gain, band: Band, grad_columns):
    """Chain rule from the stored side back to y~: Σ_f λ^(p_f·(a−n)) φ_f'(y~) (· gain) · grad_f."""
    dim = stored.shape[-1]
    grad = torch.zeros_like(stored)
    for index, feature in enumerate(features):
        slope = feature.slope(stored) * _decay(plan, feature.power, band.key_age, stored.dtype)[:, None]
        grad += grad_columns[..., index * dim : (index + 1) * dim] * (slope if gain is None else slope * gain)
    return grad


def _chunks(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """(BH, Q, L) → (BH·C, Q, g): the pulse widths of each chunk of g stored tokens."""
    bh, queries, keys = x.shape
    return x.view(bh, queries, keys // chunk, chunk).transpose(1, 2).reshape(-1, queries, chunk)


def _unchunk(x: torch.Tensor, bh: int) -> torch.Tensor:
    """Inverse of :func:`_chunks`."""
    _, queries, chunk = x.shape
    return x.view(bh, -1, queries, chunk).transpose(1, 2).reshape(bh, queries, -1)


def _noise(generator, shape, like, std):
    return std * torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def analog_read(plan: Plan, pulses, keys, values, gain_k, gain_v, band: Band, generator=None, keep=False):
    """Both analog products for a group of queries against a band of stored keys (SPEC §3.3–3.5).

    pulses (BH, Q, D); keys, values, gains (BH, L, D) with L a multiple of the chunk g.
    Returns the digital sum of the sub-tile ADC outputs (BH, Q, D) — and, with ``keep``, the
    intermediates (S, P, per-sub-tile read-outs Y) that the backward pass needs.
    """
    bh, queries, dim = pulses.shape
    n_chunks = keys.shape[1] // plan.chunk
    features = plan.features
    # First product: S_tn = Σ_f λ^(p_f·age) Q_t · φ_f(k~_n) (+ β0 Σ_d Q_td), one matmul.
    if features:
        rows, _ = _rows(features, plan, pulses, band)
        scores = torch.bmm(rows, _columns(features, plan, keys, gain_k, band).transpose(1, 2))
    else:
        scores = pulses.new_zeros(bh, queries, keys.shape[1])
    if plan.constant:
        scores += plan.constant * pulses.sum(-1, keepdim=True)
    if plan.read_noise:
        scores += _noise(generator, scores.shape, scores, plan.read_noise * plan.s_sat)
    # Charge-to-pulse: the HardSigmoid that replaces softmax; nothing outside the window.
    widths = charge_to_pulse(scores, plan.s_sat) * band.valid
    # Second product, one partial sum per chunk of g stored tokens (same decay split).
    partial = 0
    if features:
        stored = _columns(features, plan, values, gain_v, band)
        stored = stored.view(bh, n_chunks, plan.chunk, -1).reshape(bh * n_chunks, plan.chunk, -1)
        per_feature = torch.bmm(_chunks(widths, plan.chunk), stored).view(bh, n_chunks, queries, -1, dim)
        _, scales = _rows(features, plan, pulses[:1, :1], band)
        partial = (per_feature * scales[:, :, None]).sum(3)
    if plan.constant:
        per_chunk = widths.view(bh, queries, n_chunks, plan.chunk).sum(-1)
        partial = partial + plan.constant * per_chunk.transpose(1, 2)[..., None]
    # Fold chunks into physical sub-tiles, read out (gain 1/40), one ADC each, add digitally.
    readout = pulses.new_zeros(bh, plan.n_subtiles, queries, dim)
    readout.index_add_(1, band.chunk_subtile, partial)
    readout *= plan.readout_gain
    if plan.read_noise:
        readout += _noise(generator, readout.shape, readout, plan.read_noise * plan.adc_high)
    digital = (quantize(readout, plan.adc) * band.occupied[None, :, :, None]).sum(1)
    if keep:
        return digital, (scores, widths, readout)
    return digital


def analog_read_backward(plan: Plan, grad, pulses, keys, values, gain_k, gain_v, band, saved):
    """Gradients of :func:`analog_read` w.r.t. (pulses, keys, values), for ``plan.grad_features``.

    STE through the ADC rounding, zero where the ADC or the charge-to-pulse converter saturates.
    """
    scores, widths, readout = saved
    bh, queries, dim = pulses.shape
    n_chunks = keys.shape[1] // plan.chunk
    features = plan.grad_features
    adc_pass = in_range(readout, plan.adc) & band.occupied[None, :, :, None]
    grad_partial = (grad[:, None] * adc_pass * plan.readout_gain).index_select(1, band.chunk_subtile)
    grad_widths = torch.zeros_like(widths)
    grad_pulses = torch.zeros_like(pulses)
    grad_keys = torch.zeros_like(keys)
    grad_values = torch.zeros_like(values)
    if features:
        _, scales = _rows(features, plan, pulses[:1, :1], band)
        grad_features = (grad_partial[:, :, :, None, :] * scales[:, :, None]).flatten(3)
        grad_features = grad_features.reshape(bh * n_chunks, queries, -1)  # (BH·C, Q, F·D)
        stored = _columns(features, plan, values, gain_v, band)
        stored = stored.view(bh, n_chunks, plan.chunk, -1).reshape(bh * n_chunks, plan.chunk, -1)
        grad_widths += _unchunk(torch.bmm(grad_features, stored.transpose(1, 2)), bh)
        grad_stored = torch.bmm(_chunks(widths, plan.chunk).transpose(1, 2), grad_features)
        grad_values += _column_slopes(features, plan, values, gain_v, band, grad_stored.view(bh, -1, len(features) * dim))
    if plan.grad_constant:
        grad_sum = grad_partial.sum(-1).transpose(1, 2)  # (BH, Q, C)
        grad_widths += plan.grad_constant * grad_sum.repeat_interleave(plan.chunk, dim=2)
    grad_scores = grad_widths * charge_to_pulse_slope(scores, plan.s_sat) * band.valid
    if features:
        rows, scales = _rows(features, plan, pulses, band)
        columns = _columns(features, plan, keys, gain_k, band)
        grad_rows = torch.bmm(grad_scores, columns).view(bh, queries, len(features), dim)
        grad_pulses += (grad_rows * scales[None, :, :, None]).sum(2)
        grad_columns = torch.bmm(grad_scores.transpose(1, 2), rows)
        grad_keys += _column_slopes(features, plan, keys, gain_k, band, grad_columns)
    if plan.grad_constant:
        grad_pulses += plan.grad_constant * grad_scores.sum(-1, keepdim=True)
    return grad_pulses, grad_keys, grad_values


class _Blocks:
    """Query blocks of one sequence and the band of keys each reads.

    Block b holds queries [t0, t1) and reads keys [n0, n1) with n0 = max(0, t0 − W), W = M − 1
    rounded up to the chunk g, n1 = t1 rounded up to g (keys are padded to a multiple of g; padded
    keys lie in the future of every query and are never visible). The anchor is t0.
    """

    def __init__(self, plan: Plan, length: int, device):
        self.plan, self.length, self.device = plan, length, device
        g = plan.chunk
        self.reach = -(-(plan.window - 1) // g) * g
        self.padded = -(-length // g) * g

    def __iter__(self):
        plan, g = self.plan, self.plan.chunk
        for index, t0 in enumerate(range(0, self.length, plan.block)):
            t1 = min(t0 + plan.block, self.length)
            n0 = max(0, t0 - self.reach)
            n1 = min(-(-t1 // g) * g, self.padded)
            keys = torch.arange(n0, n1, device=self.device)
            chunk_subtile = (keys[::g] % plan.window) // plan.subtile_rows
            band = make_band(plan, torch.arange(t0, t1, device=self.device), keys, t0, chunk_subtile)
            yield index, (t0, t1), (n0, n1), band


def _generator(seed, index, device):
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed((seed + 1_000_003 * index) % 2**63)


def _pad(x, padded):
    if x is None or x.shape[1] == padded:
        return x
    return F.pad(x, (0, 0, 0, padded - x.shape[1]))


class _BandedAnalogCore(torch.autograd.Function):
    """Blocked forward; backward recomputes each block (memory O(T·D + block·M))."""

    @staticmethod
    def forward(ctx, pulses, keys, values, gain_k, gain_v, plan, noise_seed):
        blocks = _Blocks(plan, pulses.shape[1], pulses.device)
        keys_p, values_p = _pad(keys, blocks.padded), _pad(values, blocks.padded)
        gain_k_p, gain_v_p = _pad(gain_k, blocks.padded), _pad(gain_v, blocks.padded)
        out = torch.empty_like(pulses)
        for index, (t0, t1), (n0, n1), band in blocks:
            generator = _generator(noise_seed, index, pulses.device)
            args = _block_args((t0, t1), (n0, n1), pulses, keys_p, values_p, gain_k_p, gain_v_p)
            out[:, t0:t1] = analog_read(plan, *args, band, generator)
        ctx.save_for_backward(pulses, keys, values, gain_k, gain_v)
        ctx.plan, ctx.noise_seed = plan, noise_seed
        return out

    @staticmethod
    def backward(ctx, grad_out):
        pulses, keys, values, gain_k, gain_v = ctx.saved_tensors
        plan = ctx.plan
        blocks = _Blocks(plan, pulses.shape[1], pulses.device)
        keys_p, values_p = _pad(keys, blocks.padded), _pad(values, blocks.padded)
        gain_k_p, gain_v_p = _pad(gain_k, blocks.padded), _pad(gain_v, blocks.padded)
        grad_pulses = torch.zeros_like(pulses)
        grad_keys = torch.zeros_like(keys_p)
        grad_values = torch.zeros_like(values_p)
        grad_out = grad_out.contiguous()
        for index, (t0, t1), (n0, n1), band in blocks:
            generator = _generator(ctx.noise_seed, index, pulses.device)
            args = _block_args((t0, t1), (n0, n1), pulses, keys_p, values_p, gain_k_p, gain_v_p)
            _, saved = analog_read(plan, *args, band, generator, keep=True)
            gp, gk, gv = analog_read_backward(plan, grad_out[:, t0:t1], *args, band, saved)
            grad_pulses[:, t0:t1] += gp
            grad_keys[:, n0:n1] += gk
            grad_values[:, n0:n1] += gv
        length = keys.shape[1]
        return grad_pulses, grad_keys[:, :length], grad_values[:, :length], None, None, None, None


def _block_args(queries, keys, pulses, keys_p, values_p, gain_k_p, gain_v_p):
    """One block's queries and its band of keys, values and cell gains."""
    (t0, t1), (n0, n1) = queries, keys
    gains = [None if g is None else g[:, n0:n1] for g in (gain_k_p, gain_v_p)]
    return (pulses[:, t0:t1], keys_p[:, n0:n1], values_p[:, n0:n1], *gains)
