"""The Triton source of the fused analog core (SPEC §3.3–3.5): forward, dQ and dK/dV kernels.

Only ``@triton.jit`` functions live here; :mod:`gaincell.op.kernels.fused` imports this module on
first use (compiled for the GPU, or interpreted on the CPU under ``TRITON_INTERPRET=1``, as Triton
decides when first imported) and launches them. Every kernel walks the same loops: for a block of
queries, the physical sub-tiles s = (n mod M) // R; inside one, the rounds r of the circular array
whose keys r·M + [sR, sR + R) meet the block's band (a sub-tile receives keys from two rounds once
T > M: each query sees one of them); inside a round, chunks of BN keys. Per (query, key) tile the
decay λ^(p·age) = e^(−ε·age)^p is computed directly (age ≥ 0 in the window, so every factor is ≤ 1:
no anchor split as in the banded form). Each sub-tile's partial sum stays in fp32 registers until
its ADC.

Constexprs fix the structure (which powers of the cell polynomial g are present, leakage on or off,
whether the ADC quantises, the dot precision, block sizes); the coefficients themselves are loaded
from a small fp32 tensor (index p = β_p), so one compiled kernel serves every coefficient value.
The forward saves each sub-tile's ADC pass mask as bits for the backward (:func:`_store_passes`).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _round_half_even(x):
    """round() as torch does it (ties to even); the interpreter lacks rint and floor(x + 0.5) mis-rounds ties."""
    low = tl.floor(x)
    frac = x - low  # exact in float arithmetic
    odd = (low - 2.0 * tl.floor(low * 0.5)) == 1.0
    up = (frac > 0.5) | ((frac == 0.5) & odd)
    return tl.where(up, low + 1.0, low)


@triton.jit
def _dot(a, b, DOT: tl.constexpr):
    """a @ b with fp32 accumulation: operands in fp32 (``ieee``), on tf32 tensor cores (``tf32``,
    ``tf32x3``), or rounded to fp16 / bf16 first (``fp16``, ``bf16``: the fastest, least exact)."""
    if DOT == "fp16":
        out = tl.dot(a.to(tl.float16), b.to(tl.float16), out_dtype=tl.float32)
    elif DOT == "bf16":
        out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)
    else:
        out = tl.dot(a, b, input_precision=DOT)
    return out


@triton.jit
def _poly(y, COEF, POWERS: tl.constexpr, NP: tl.constexpr):
    """Σ_{p ≥ 1} β_p y^p elementwise (the folded feature g − β0 used without leakage)."""
    out = tl.zeros_like(y)
    power = tl.full(y.shape, 1.0, tl.float32)
    for p in tl.static_range(1, NP + 1):
        power = power * y
        if (POWERS >> p) & 1:
            out += tl.load(COEF + p) * power
    return out


@triton.jit
def _poly_slope(y, COEF, POWERS: tl.constexpr, NP: tl.constexpr):
    """Σ_{p ≥ 1} p·β_p y^(p−1) elementwise: the chain rule from a feature back to the stored offset."""
    out = tl.zeros_like(y)
    power = tl.full(y.shape, 1.0, tl.float32)
    for p in tl.static_range(1, NP + 1):
        if (POWERS >> p) & 1:
            out += (p * tl.load(COEF + p)) * power
        power = power * y
    return out


@triton.jit
def _scores(q, k, decay, COEF, POWERS: tl.constexpr, NP: tl.constexpr, LEAK: tl.constexpr, DOT: tl.constexpr):
    """S_tn = Σ_{p ≥ 1} β_p λ^(p·age) Σ_d Q_td k~_nd^p for a (BT, BN) tile (the β0 term is the caller's)."""
    if LEAK:
        scores = tl.zeros((q.shape[0], k.shape[0]), tl.float32)
        power = tl.full(k.shape, 1.0, tl.float32)
        leaked = tl.full(decay.shape, 1.0, tl.float32)
        for p in tl.static_range(1, NP + 1):
            power = power * k
            leaked = leaked * decay
            if (POWERS >> p) & 1:
                scores += (tl.load(COEF + p) * leaked) * _dot(q, tl.trans(power), DOT)
    else:
        scores = _dot(q, tl.trans(_poly(k, COEF, POWERS, NP)), DOT)
    return scores


@triton.jit
def _weighted(w, v, decay, COEF, POWERS: tl.constexpr, NP: tl.constexpr, LEAK: tl.constexpr, DOT: tl.constexpr):
    """Σ_n w_tn Σ_{p ≥ 1} β_p λ^(p·age) v~_nd^p for a (BT, BN) weight tile and (BN, BD) stored tile."""
    if LEAK:
        out = tl.zeros((w.shape[0], v.shape[1]), tl.float32)
        power = tl.full(v.shape, 1.0, tl.float32)
        leaked = tl.full(decay.shape, 1.0, tl.float32)
        for p in tl.static_range(1, NP + 1):
            power = power * v
            leaked = leaked * decay
            if (POWERS >> p) & 1:
                out += _dot(w * (tl.load(COEF + p) * leaked), power, DOT)
    else:
        out = _dot(w, _poly(v, COEF, POWERS, NP), DOT)
    return out


@triton.jit
def _transposed(w, x, v, decay, COEF, POWERS: tl.constexpr, NP: tl.constexpr, LEAK: tl.constexpr, DOT: tl.constexpr):
    """Σ_t w_tn Σ_p p·β_p λ^(p·age) v~_nd^(p−1) x_td: the gradient w.r.t. a stored tile v (BN, BD)."""
    if LEAK:
        out = tl.zeros(v.shape, tl.float32)
        power = tl.full(v.shape, 1.0, tl.float32)
        leaked = tl.full(decay.shape, 1.0, tl.float32)
        for p in tl.static_range(1, NP + 1):
            leaked = leaked * decay
            if (POWERS >> p) & 1:
                out += ((p * tl.load(COEF + p)) * power) * _dot(tl.trans(w * leaked), x, DOT)
            power = power * v
    else:
        out = _poly_slope(v, COEF, POWERS, NP) * _dot(tl.trans(w), x, DOT)
    return out


@triton.jit
def _tile(t, n, T, M, eps, LEAK: tl.constexpr):
    """(visible, e^(−ε·age)) for queries t and keys n: causal, inside the window, both in the sequence."""
    age = t[:, None] - n[None, :]
    visible = (age >= 0) & (age < M) & (t < T)[:, None] & (n < T)[None, :]
    if LEAK:
        decay = tl.exp(-eps * tl.maximum(age, 0).to(tl.float32))
    else:
        decay = tl.full(age.shape, 1.0, tl.float32)
    return visible, decay


@triton.jit
def _pulse_widths(
    q,
    q_sum,
    k,
    decay,
    visible,
    COEF,
    POWERS: tl.constexpr,
    NP: tl.constexpr,
    LEAK: tl.constexpr,
    DOT: tl.constexpr,
    CONST: tl.constexpr,
    s_sat,
):
    """The first product with the cell's own features and the charge-to-pulse converter:
    (S_sat·P, where the converter passes gradient: visible and 0 ≤ S ≤ S_sat)."""
    scores = _scores(q, k, decay, COEF, POWERS, NP, LEAK, DOT)
    if CONST:
        scores += tl.load(COEF) * q_sum[:, None]
    widths = tl.where(visible, tl.minimum(tl.maximum(scores, 0.0), s_sat), 0.0)
    unsaturated = visible & (scores >= 0.0) & (scores <= s_sat)
    return widths, unsaturated


@triton.jit
def _grad_widths(
    g,
    g_sum,
    v,
    decay,
    unsaturated,
    GCOEF,
    GPOWERS: tl.constexpr,
    GNP: tl.constexpr,
    LEAK: tl.constexpr,
    DOT: tl.constexpr,
    GCONST: tl.constexpr,
    read_scale,
):
    """d loss / d S for a (BT, BN) tile from the ADC-passed output gradient g of the keys' sub-tile,
    through the gradient model's second product and the converter's pass mask."""
    grad = tl.zeros(decay.shape, tl.float32)
    if LEAK:
        power = tl.full(v.shape, 1.0, tl.float32)
        leaked = tl.full(decay.shape, 1.0, tl.float32)
        for p in tl.static_range(1, GNP + 1):
            power = power * v
            leaked = leaked * decay
            if (GPOWERS >> p) & 1:
                grad += (tl.load(GCOEF + p) * leaked) * _dot(g, tl.trans(power), DOT)
    else:
        grad = _dot(g, tl.trans(_poly(v, GCOEF, GPOWERS, GNP)), DOT)
    if GCONST:
        grad += tl.load(GCOEF) * g_sum[:, None]
    return tl.where(unsaturated, grad * read_scale, 0.0)


@triton.jit
def _adc(y, low, high, step, origin, QUANT: tl.constexpr):
    """One sub-tile's ADC: clamp to [low, high], then origin + step·round_half_even((x − origin)/step)."""
    clamped = tl.minimum(tl.maximum(y, low), high)
    passed = clamped == y
    if QUANT:
        clamped = _round_half_even((clamped - origin) / step) * step + origin
    return clamped, passed


@triton.jit
def _store_passes(PASS, s, bh, t, passed, T, BT: tl.constexpr, BD: tl.constexpr, WORD: tl.constexpr):
    """Sub-tile s's ADC pass mask for queries t, one bit per output: (NSUB, BH, T, BD/WORD) int32 words."""
    words_per_row: tl.constexpr = BD // WORD
    d = tl.arange(0, BD)
    bits = passed.to(tl.int32) << (d % WORD)[None, :]
    words = tl.sum(tl.reshape(bits, (BT, words_per_row, WORD)), 2)  # disjoint bits: the sum is their OR
    w = tl.arange(0, words_per_row)
    row = (s * tl.num_programs(1).to(tl.int64) + bh) * T * words_per_row
    tl.store(PASS + row + t[:, None] * words_per_row + w[None, :], words, mask=(t < T)[:, None])


@triton.jit
def _load_passes(PASS, s, bh, t, rows, T, BD: tl.constexpr, WORD: tl.constexpr):
    """The bits :func:`_store_passes` wrote, back as a (BT, BD) float mask."""
    words_per_row: tl.constexpr = BD // WORD
    d = tl.arange(0, BD)
    row = (s * tl.num_programs(1).to(tl.int64) + bh) * T * words_per_row
    words = tl.load(PASS + row + t[:, None] * words_per_row + (d // WORD)[None, :], mask=rows, other=0)
    return ((words >> (d % WORD)[None, :]) & 1).to(tl.float32)


@triton.jit
def forward_kernel(
    Q,
    K,
    V,
    OUT,
    PASS,
    COEF,
    T,
    D,
    M,
    R,
    NSUB,
    eps,
    s_sat,
    read_scale,
    low,
    high,
    step,
    origin,
    POWERS: tl.constexpr,
    NP: tl.constexpr,
    CONST: tl.constexpr,
    LEAK: tl.constexpr,
    QUANT: tl.constexpr,
    SAVE: tl.constexpr,
    DOT: tl.constexpr,
    BT: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    WORD: tl.constexpr,
):
    """Readout of one block of BT queries for one (batch, head): Σ_s ADC(Y_s), Y_s in fp32 registers.

    With SAVE, the ADC pass mask of every sub-tile (0 where it is not occupied) goes to PASS, one bit per
    output (:func:`_store_passes`).
    """
    block = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    t = block * BT + tl.arange(0, BT)
    d = tl.arange(0, BD)
    rows = (t < T)[:, None] & (d < D)[None, :]
    offsets = bh * T * D + t[:, None] * D + d[None, :]
    q = tl.load(Q + offsets, mask=rows, other=0.0).to(tl.float32)
    q_sum = tl.sum(q, 1)
    beta0 = tl.load(COEF)
    out = tl.zeros((BT, BD), tl.float32)
    n_lo = tl.maximum(block * BT - M + 1, 0)
    n_hi = tl.minimum(block * BT + BT, T)  # exclusive
    for s in range(0, NSUB):
        start = s * R
        length = tl.minimum(R, M - start)
        partial = tl.zeros((BT, BD), tl.float32)
        for r in range(n_lo // M, (n_hi - 1) // M + 1):
            a = tl.maximum(r * M + start, n_lo)
            b = tl.minimum(r * M + start + length, n_hi)
            for n0 in range(a, b, BN):
                n = n0 + tl.arange(0, BN)
                stored = (n < b)[:, None] & (d < D)[None, :]
                key_offsets = bh * T * D + n[:, None] * D + d[None, :]
                k = tl.load(K + key_offsets, mask=stored, other=0.0).to(tl.float32)
                v = tl.load(V + key_offsets, mask=stored, other=0.0).to(tl.float32)
                visible, decay = _tile(t, n, T, M, eps, LEAK)
                visible = visible & (n < b)[None, :]
                widths, _ = _pulse_widths(q, q_sum, k, decay, visible, COEF, POWERS, NP, LEAK, DOT, CONST, s_sat)
                partial += _weighted(widths, v, decay, COEF, POWERS, NP, LEAK, DOT)
                if CONST:
                    partial += beta0 * tl.sum(widths, 1)[:, None]
        levels, passed = _adc(partial * read_scale, low, high, step, origin, QUANT)
        occupied = (start <= t)[:, None]  # a sub-tile with no visible key for t is not converted
        out += tl.where(occupied, levels, 0.0)
        if SAVE:
            _store_passes(PASS, s, bh, t, passed & occupied, T, BT, BD, WORD)
    tl.store(OUT + offsets, out, mask=rows)


@triton.jit
def grad_queries_kernel(
    Q,
    K,
    V,
    GRAD,
    PASS,
    DQ,
    COEF,
    GCOEF,
    T,
    D,
    M,
    R,
    NSUB,
    eps,
    s_sat,
    read_scale,
    POWERS: tl.constexpr,
    NP: tl.constexpr,
    CONST: tl.constexpr,
    GPOWERS: tl.constexpr,
    GNP: tl.constexpr,
    GCONST: tl.constexpr,
    LEAK: tl.constexpr,
    DOT: tl.constexpr,
    BT: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    WORD: tl.constexpr,
):
    """d loss / d pulses for one block of queries: the forward's loops, S recomputed, the ADC masks read back."""
    block = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    t = block * BT + tl.arange(0, BT)
    d = tl.arange(0, BD)
    rows = (t < T)[:, None] & (d < D)[None, :]
    offsets = bh * T * D + t[:, None] * D + d[None, :]
    q = tl.load(Q + offsets, mask=rows, other=0.0).to(tl.float32)
    q_sum = tl.sum(q, 1)
    grad_out = tl.load(GRAD + offsets, mask=rows, other=0.0).to(tl.float32)
    grad_beta0 = tl.load(GCOEF)
    dq = tl.zeros((BT, BD), tl.float32)
    n_lo = tl.maximum(block * BT - M + 1, 0)
    n_hi = tl.minimum(block * BT + BT, T)
    for s in range(0, NSUB):
        start = s * R
        length = tl.minimum(R, M - start)
        g = grad_out * _load_passes(PASS, s, bh, t, rows, T, BD, WORD)
        g_sum = tl.sum(g, 1)
        for r in range(n_lo // M, (n_hi - 1) // M + 1):
            a = tl.maximum(r * M + start, n_lo)
            b = tl.minimum(r * M + start + length, n_hi)
            for n0 in range(a, b, BN):
                n = n0 + tl.arange(0, BN)
                stored = (n < b)[:, None] & (d < D)[None, :]
                key_offsets = bh * T * D + n[:, None] * D + d[None, :]
                k = tl.load(K + key_offsets, mask=stored, other=0.0).to(tl.float32)
                v = tl.load(V + key_offsets, mask=stored, other=0.0).to(tl.float32)
                visible, decay = _tile(t, n, T, M, eps, LEAK)
                visible = visible & (n < b)[None, :]
                _, unsaturated = _pulse_widths(q, q_sum, k, decay, visible, COEF, POWERS, NP, LEAK, DOT, CONST, s_sat)
                grad_scores = _grad_widths(
                    g, g_sum, v, decay, unsaturated, GCOEF, GPOWERS, GNP, LEAK, DOT, GCONST, read_scale
                )
                dq += _weighted(grad_scores, k, decay, GCOEF, GPOWERS, GNP, LEAK, DOT)
                if GCONST:
                    dq += grad_beta0 * tl.sum(grad_scores, 1)[:, None]
    tl.store(DQ + offsets, dq, mask=rows)


@triton.jit
def grad_stored_kernel(
    Q,
    K,
    V,
    GRAD,
    PASS,
    DK,
    DV,
    COEF,
    GCOEF,
    T,
    D,
    M,
    R,
    NSUB,
    CHUNKS,
    eps,
    s_sat,
    read_scale,
    POWERS: tl.constexpr,
    NP: tl.constexpr,
    CONST: tl.constexpr,
    GPOWERS: tl.constexpr,
    GNP: tl.constexpr,
    GCONST: tl.constexpr,
    LEAK: tl.constexpr,
    DOT: tl.constexpr,
    BT: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    WORD: tl.constexpr,
):
    """d loss / d k~ and d v~ for one chunk of ≤ BN keys inside one physical sub-tile (so one ADC mask),
    looping over the queries that see it; program 0 indexes (round, sub-tile, chunk of CHUNKS per sub-tile)."""
    index = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    per_round = NSUB * CHUNKS
    r = index // per_round
    s = (index % per_round) // CHUNKS
    c = index % CHUNKS
    start = r * M + s * R
    n0 = start + c * BN
    n1 = tl.minimum(tl.minimum(start + tl.minimum(R, M - s * R), n0 + BN), T)  # exclusive
    if n0 < n1:
        n = n0 + tl.arange(0, BN)
        d = tl.arange(0, BD)
        stored = (n < n1)[:, None] & (d < D)[None, :]
        key_offsets = bh * T * D + n[:, None] * D + d[None, :]
        k = tl.load(K + key_offsets, mask=stored, other=0.0).to(tl.float32)
        v = tl.load(V + key_offsets, mask=stored, other=0.0).to(tl.float32)
        dk = tl.zeros((BN, BD), tl.float32)
        dv = tl.zeros((BN, BD), tl.float32)
        for t0 in range(n0, tl.minimum(n1 - 1 + M, T), BT):
            t = t0 + tl.arange(0, BT)
            rows = (t < T)[:, None] & (d < D)[None, :]
            offsets = bh * T * D + t[:, None] * D + d[None, :]
            q = tl.load(Q + offsets, mask=rows, other=0.0).to(tl.float32)
            q_sum = tl.sum(q, 1)
            g = tl.load(GRAD + offsets, mask=rows, other=0.0).to(tl.float32)
            g = g * _load_passes(PASS, s, bh, t, rows, T, BD, WORD)
            g_sum = tl.sum(g, 1)
            visible, decay = _tile(t, n, T, M, eps, LEAK)
            visible = visible & (n < n1)[None, :]
            widths, unsaturated = _pulse_widths(q, q_sum, k, decay, visible, COEF, POWERS, NP, LEAK, DOT, CONST, s_sat)
            grad_scores = _grad_widths(g, g_sum, v, decay, unsaturated, GCOEF, GPOWERS, GNP, LEAK, DOT, GCONST, read_scale)
            dv += _transposed(widths, g, v, decay, GCOEF, GPOWERS, GNP, LEAK, DOT)
            dk += _transposed(grad_scores, q, k, decay, GCOEF, GPOWERS, GNP, LEAK, DOT)
        tl.store(DK + key_offsets, dk, mask=stored)
        tl.store(DV + key_offsets, dv * read_scale, mask=stored)
