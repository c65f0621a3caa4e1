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

    @property
    def powers(self) -> set[int]:
        return {f.power for f in self.features + self.grad_features} | {0}


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
    """Where a group of queries reads: ages and validity of each (query, key) pair, and sub-tiles.

    Keys are taken in chunks of g = gcd(M, R) consecutive tokens; every chunk lies in one physical
    sub-tile, so per-sub-tile sums are per-chunk matmuls folded by ``chunk_subtile``.
    """

    valid: torch.Tensor  # (queries, keys) bool: 0 <= age < M
    decay: dict  # power -> (queries, keys) λ^(power·age), zero where invalid
    chunk_subtile: torch.Tensor  # (keys // g,) physical sub-tile of each chunk
    occupied: torch.Tensor  # (n_subtiles, queries) bool: the sub-tile holds a visible token


def make_band(plan: Plan, age: torch.Tensor, chunk_subtile: torch.Tensor, dtype) -> Band:
    """Build a :class:`Band` from integer ages (query position − key position, any sign)."""
    valid = (age >= 0) & (age < plan.window)
    decay = {}
    for power in plan.powers:
        if plan.leakage == 0 or power == 0:
            decay[power] = valid.to(dtype)
        else:
            decay[power] = torch.exp(-plan.leakage * power * age.clamp(min=0).to(dtype)) * valid
    queries, keys = valid.shape
    per_chunk = valid.view(queries, keys // plan.chunk, plan.chunk).any(-1).to(dtype)
    occupied = torch.zeros(plan.n_subtiles, queries, dtype=dtype, device=age.device)
    occupied.index_add_(0, chunk_subtile, per_chunk.T)
    return Band(valid, decay, chunk_subtile, occupied > 0)


def _stack(features, x, gain):
    """φ_f(x) (· cell gain) for each feature, stacked along the key axis: (BH, F·L, D)."""
    parts = [f.value(x) if gain is None else f.value(x) * gain for f in features]
    return torch.cat(parts, dim=1)


def _by_chunk(x: torch.Tensor, n_features: int, chunk: int) -> torch.Tensor:
    """(BH, Q, F·L) weights → (BH·C, Q, F·g): one small matmul per chunk of g keys."""
    bh, queries, width = x.shape
    keys = width // n_features
    x = x.view(bh, queries, n_features, keys // chunk, chunk).permute(0, 3, 1, 2, 4)
    return x.reshape(bh * (keys // chunk), queries, n_features * chunk)


def _chunked_values(x: torch.Tensor, n_features: int, chunk: int) -> torch.Tensor:
    """(BH, F·L, D) stored features → (BH·C, F·g, D), matching :func:`_by_chunk`."""
    bh, width, dim = x.shape
    keys = width // n_features
    x = x.view(bh, n_features, keys // chunk, chunk, dim).permute(0, 2, 1, 3, 4)
    return x.reshape(bh * (keys // chunk), n_features * chunk, dim)


def _noise(generator, shape, like, std):
    return std * torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def analog_read(plan: Plan, pulses, keys, values, gain_k, gain_v, band: Band, generator=None, keep=False):
    """Both analog products for a group of queries against a band of stored keys (SPEC §3.3–3.5).

    pulses (BH, Q, D); keys, values, gains (BH, L, D) with L a multiple of the chunk g.
    Returns the digital sum of the sub-tile ADC outputs (BH, Q, D) — and, with ``keep``, the
    intermediates (S, P, per-sub-tile read-outs Y) that the backward pass needs.
    """
    bh, queries, dim = pulses.shape
    n_keys = keys.shape[1]
    n_chunks = n_keys // plan.chunk
    features = plan.features
    # First product: S = Σ_f λ^(p_f·age) ∘ (Q · φ_f(k~)ᵀ) + β0 · rowsum(Q).
    scores = torch.zeros(bh, queries, n_keys, dtype=pulses.dtype, device=pulses.device)
    if features:
        products = torch.bmm(pulses, _stack(features, keys, gain_k).transpose(1, 2))
        for index, feature in enumerate(features):
            scores += products[:, :, index * n_keys : (index + 1) * n_keys] * band.decay[feature.power]
    if plan.constant:
        scores += plan.constant * pulses.sum(-1, keepdim=True) * band.decay[0]
    if plan.read_noise:
        scores += _noise(generator, scores.shape, scores, plan.read_noise * plan.s_sat)
    # Charge-to-pulse: the HardSigmoid that replaces softmax; nothing outside the window.
    pulse_widths = charge_to_pulse(scores, plan.s_sat) * band.valid
    # Second product, one partial sum per chunk of g stored tokens.
    partial = torch.zeros(bh, n_chunks, queries, dim, dtype=pulses.dtype, device=pulses.device)
    if features:
        weights = torch.cat([pulse_widths * band.decay[f.power] for f in features], dim=2)
        stored = _chunked_values(_stack(features, values, gain_v), len(features), plan.chunk)
        partial += torch.bmm(_by_chunk(weights, len(features), plan.chunk), stored).view(bh, n_chunks, queries, dim)
    if plan.constant:
        per_chunk = pulse_widths.view(bh, queries, n_chunks, plan.chunk).sum(-1)
        partial += plan.constant * per_chunk.transpose(1, 2)[..., None]
    # Fold chunks into physical sub-tiles, read out (gain 1/40), one ADC each, add digitally.
    readout = torch.zeros(bh, plan.n_subtiles, queries, dim, dtype=pulses.dtype, device=pulses.device)
    readout.index_add_(1, band.chunk_subtile, partial)
    readout *= plan.readout_gain
    if plan.read_noise:
        readout += _noise(generator, readout.shape, readout, plan.read_noise * plan.adc_high)
    digital = (quantize(readout, plan.adc) * band.occupied[None, :, :, None]).sum(1)
    if keep:
        return digital, (scores, pulse_widths, readout)
    return digital


def analog_read_backward(plan: Plan, grad, pulses, keys, values, gain_k, gain_v, band, saved):
    """Gradients of :func:`analog_read` w.r.t. (pulses, keys, values), for ``plan.grad_features``.

    STE through the ADC rounding, zero where the ADC or the charge-to-pulse converter saturates.
    """
    scores, pulse_widths, readout = saved
    bh, queries, dim = pulses.shape
    n_keys = keys.shape[1]
    n_chunks = n_keys // plan.chunk
    features = plan.grad_features
    adc_pass = in_range(readout, plan.adc) & band.occupied[None, :, :, None]
    grad_readout = grad[:, None] * adc_pass * plan.readout_gain  # (BH, NS, Q, D)
    grad_partial = grad_readout.index_select(1, band.chunk_subtile)  # (BH, C, Q, D)
    grad_pulses_width = torch.zeros_like(pulse_widths)
    grad_keys = torch.zeros_like(keys)
    grad_values = torch.zeros_like(values)
    grad_pulses = torch.zeros_like(pulses)
    if features:
        n_feat = len(features)
        stored = _chunked_values(_stack(features, values, gain_v), n_feat, plan.chunk)
        grad_chunks = grad_partial.reshape(bh * n_chunks, queries, dim)
        # dP: through each feature's stored values.
        grad_weights = torch.bmm(grad_chunks, stored.transpose(1, 2))  # (BH·C, Q, F·g)
        grad_weights = grad_weights.view(bh, n_chunks, queries, n_feat, plan.chunk).permute(0, 2, 3, 1, 4)
        grad_weights = grad_weights.reshape(bh, queries, n_feat, n_keys)
        weights = []
        for index, feature in enumerate(features):
            grad_pulses_width += grad_weights[:, :, index] * band.decay[feature.power]
            weights.append(pulse_widths * band.decay[feature.power])
        # dv~: through the weights of each feature, then the feature's slope.
        weights = _by_chunk(torch.cat(weights, dim=2), n_feat, plan.chunk)
        grad_stored = torch.bmm(weights.transpose(1, 2), grad_chunks)  # (BH·C, F·g, D)
        grad_stored = grad_stored.view(bh, n_chunks, n_feat, plan.chunk, dim).permute(0, 2, 1, 3, 4)
        grad_stored = grad_stored.reshape(bh, n_feat, n_keys, dim)
        for index, feature in enumerate(features):
            slope = feature.slope(values) if gain_v is None else feature.slope(values) * gain_v
            grad_values += grad_stored[:, index] * slope
    if plan.grad_constant:
        grad_sum = grad_partial.sum(-1).transpose(1, 2)  # (BH, Q, C)
        grad_pulses_width += plan.grad_constant * grad_sum.repeat_interleave(plan.chunk, dim=2)
    grad_scores = grad_pulses_width * charge_to_pulse_slope(scores, plan.s_sat) * band.valid
    if features:
        scaled = torch.cat([grad_scores * band.decay[f.power] for f in features], dim=2)
        grad_pulses += torch.bmm(scaled, _stack(features, keys, gain_k))
        grad_stored = torch.bmm(scaled.transpose(1, 2), pulses).view(bh, len(features), n_keys, dim)
        for index, feature in enumerate(features):
            slope = feature.slope(keys) if gain_k is None else feature.slope(keys) * gain_k
            grad_keys += grad_stored[:, index] * slope
    if plan.grad_constant:
        grad_pulses += plan.grad_constant * (grad_scores * band.decay[0]).sum(-1, keepdim=True)
    return grad_pulses, grad_keys, grad_values


class _Blocks:
    """Query blocks of one sequence and their key bands, sharing one precomputed canonical band.

    Block b holds queries [t0, t1) and reads keys [n0, n0 + L) with n0 = max(0, t0 − W),
    W = M − 1 rounded up to the chunk g. Every unclipped block sees the same ages, so the decay
    tables are computed once and sliced for the first (clipped) blocks.
    """

    def __init__(self, plan: Plan, length: int, device, dtype):
        self.plan, self.length = plan, length
        g = plan.chunk
        self.reach = -(-(plan.window - 1) // g) * g
        self.padded = -(-length // g) * g
        rows = torch.arange(plan.block, device=device)[:, None]
        cols = torch.arange(self.reach + plan.block, device=device)[None, :]
        canonical_age = rows + self.reach - cols
        dummy = torch.zeros((self.reach + plan.block) // g, dtype=torch.long, device=device)
        self.canonical = make_band(plan, canonical_age, dummy, dtype)
        self.device = device

    def __iter__(self):
        plan, g = self.plan, self.plan.chunk
        for index, t0 in enumerate(range(0, self.length, plan.block)):
            t1 = min(t0 + plan.block, self.length)
            n0 = max(0, t0 - self.reach)
            n1 = min(-(-t1 // g) * g, self.padded)
            offset = self.reach - (t0 - n0)
            cols = slice(offset, offset + (n1 - n0))
            rows = slice(0, t1 - t0)
            canon = self.canonical
            starts = torch.arange(n0, n1, g, device=self.device)
            chunk_subtile = (starts % plan.window) // plan.subtile_rows
            band = Band(
                valid=canon.valid[rows, cols],
                decay={p: d[rows, cols] for p, d in canon.decay.items()},
                chunk_subtile=chunk_subtile,
                occupied=None,
            )
            per_chunk = band.valid.reshape(t1 - t0, (n1 - n0) // g, g).any(-1).to(canon.decay[0].dtype)
            occupied = torch.zeros(plan.n_subtiles, t1 - t0, dtype=per_chunk.dtype, device=self.device)
            band.occupied = occupied.index_add_(0, chunk_subtile, per_chunk.T) > 0
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
        blocks = _Blocks(plan, pulses.shape[1], pulses.device, pulses.dtype)
        keys_p, values_p = _pad(keys, blocks.padded), _pad(values, blocks.padded)
        gain_k_p, gain_v_p = _pad(gain_k, blocks.padded), _pad(gain_v, blocks.padded)
        out = torch.empty_like(pulses)
        for index, (t0, t1), (n0, n1), band in blocks:
            out[:, t0:t1] = analog_read(
                plan,
                pulses[:, t0:t1],
                keys_p[:, n0:n1],
                values_p[:, n0:n1],
                None if gain_k_p is None else gain_k_p[:, n0:n1],
                None if gain_v_p is None else gain_v_p[:, n0:n1],
                band,
                _generator(noise_seed, index, pulses.device),
            )
        ctx.save_for_backward(pulses, keys, values, gain_k, gain_v)
        ctx.plan, ctx.noise_seed = plan, noise_seed
        return out

    @staticmethod
    def backward(ctx, grad_out):
        pulses, keys, values, gain_k, gain_v = ctx.saved_tensors
        plan = ctx.plan
        blocks = _Blocks(plan, pulses.shape[1], pulses.device, pulses.dtype)
        keys_p, values_p = _pad(keys, blocks.padded), _pad(values, blocks.padded)
        gain_k_p, gain_v_p = _pad(gain_k, blocks.padded), _pad(gain_v, blocks.padded)
        grad_pulses = torch.zeros_like(pulses)
        grad_keys = torch.zeros_like(keys_p)
        grad_values = torch.zeros_like(values_p)
        grad_out = grad_out.contiguous()
        for index, (t0, t1), (n0, n1), band in blocks:
            args = (
                pulses[:, t0:t1],
                keys_p[:, n0:n1],
                values_p[:, n0:n1],
                None if gain_k_p is None else gain_k_p[:, n0:n1],
                None if gain_v_p is None else gain_v_p[:, n0:n1],
            )
            generator = _generator(ctx.noise_seed, index, pulses.device)
            _, saved = analog_read(plan, *args, band, generator, keep=True)
            gp, gk, gv = analog_read_backward(plan, grad_out[:, t0:t1], *args, band, saved)
            grad_pulses[:, t0:t1] += gp
            grad_keys[:, n0:n1] += gk
            grad_values[:, n0:n1] += gv
        length = keys.shape[1]
        return grad_pulses, grad_keys[:, :length], grad_values[:, :length], None, None, None, None
