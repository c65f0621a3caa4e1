"""The Triton source of the fused analog core, second version (``variant="v2"``): same outputs as
:mod:`~gaincell.op.kernels.fused_kernels` (v1), fewer exposed loads and less per-tile work.

- **One flat loop over the band.** A block of queries [t0, t0 + BT) reads the keys [n_lo, n_hi). Its
  chunks are the band's slices of BN keys aligned to the physical sub-tiles (chunk slot
  g = round·G + sub-tile·CH + c, G = NSUB·CH slots per round, none straddling a sub-tile). v1 looped
  sub-tile → round → chunk, so at R = 64, BN = 32 its innermost loop ran twice and Triton's software
  pipelining (innermost loops only) hid no load latency. Here one loop runs over every chunk of the
  band, ordered by the chunk's position in the circular array and then by round (:func:`_band`),
  so the chunks of one physical sub-tile, from both rounds once T > M, are consecutive: the ADC of
  the running partial sum happens in the loop when the next chunk belongs to another sub-tile. The
  walk advances by comparisons (:func:`_advance`), no integer division per chunk (each is a
  reciprocal on the special-function unit that the exps also need).
- **The decay factorised around an anchor** (``LEAK == 1``): λ^(p·(t − n)) = e^(−pε(t − a)) ·
  e^(−pε(a − n)), a = the block's first query (the chunk's first key in the dK/dV kernel). Per tile
  that leaves BT + BN exps instead of BT·BN and no (BT, BN) decay products: each product is one dot
  per power with its output rows scaled by β_p e^(−pε(t − a)), the keys' factor inside the key
  operand (:func:`_split_scores` says where 10-bit modes differ), the weights converted once. Both
  factors stay within e^±(NP·ε·tile) for keys that can be visible; the launcher picks this form only
  where that is ≤ e^4 (fp16's range with room, :func:`gaincell.op.kernels.fused.leak_mode`), else the
  direct per-tile decay of v1 (``LEAK == 2``). ``LEAK == 3`` keeps v1's per-tile products but builds
  the (BT, BN) decay tile as rise ⊗ fall, a multiply instead of an exp (the gradient kernels in the
  fp32 and tf32 modes, where the factorised products spill: ``fused.SPLIT_BACKWARD``). Without
  leakage (``LEAK == 0``) the powers fold into one feature per side, as in v1.

The helpers of v1 (dots, ADC, pass bits, the direct-decay products) are shared, not copied.
"""

from __future__ import annotations

import triton
import triton.language as tl

from gaincell.op.kernels.fused_kernels import (
    _adc,
    _dot,
    _load_passes,
    _round_half_even,
    _scores,
    _store_passes,
    _tile,
    _transposed,
    _weighted,
)


@triton.jit
def _slot_chunk(n, M, R, CH, G, BN: tl.constexpr):
    """The chunk slot of key n: round·G + sub-tile·CH + chunk within the sub-tile."""
    slot = n % M
    s = slot // R
    return (n // M) * G + s * CH + (slot - s * R) // BN


@triton.jit
def _band(n_lo, n_hi, M, R, CH, G, BN: tl.constexpr):
    """The walk over the chunks of keys [n_lo, n_hi): (lead, rounds, last, total, first round, first
    sub-tile). Positions p = g − first ∈ [0, G) (first: the first sub-tile's first slot) hold
    `rounds + [p ≤ last] − [p < lead]` chunks of consecutive rounds (lead: the band's offset into the
    first sub-tile, last = (g_hi − first) mod G); total = g_hi − g_lo + 1 chunks in all."""
    g_lo = _slot_chunk(n_lo, M, R, CH, G, BN)
    g_hi = _slot_chunk(n_hi - 1, M, R, CH, G, BN)
    lead = (g_lo % G) % CH
    first = g_lo - lead
    return lead, (g_hi - first) // G, (g_hi - first) % G, g_hi - g_lo + 1, first // G, (first % G) // CH


@triton.jit
def _start(lead, rounds):
    """(p, k): the first position holding a chunk (0, else lead) and its first round."""
    p = tl.where(rounds + 1 - (lead > 0).to(tl.int32) > 0, 0, lead)
    return p, (p < lead).to(tl.int32)


@triton.jit
def _advance(p, k, c, s, lap, lead, rounds, last, CH, NSUB):
    """The walk's next chunk, without a division: the next round at this position p, else the next
    position holding a chunk (skipping the empty ones between last and lead), its chunk c in sub-tile
    s, lap counting wraps past the array's end. Returns (done with p, p, k, c, s, lap)."""
    done = k >= rounds + (p <= last).to(tl.int32) - 1
    p_next = p + 1
    empty = (p_next < lead) & (rounds + (p_next <= last).to(tl.int32) - 1 <= 0)
    p_next = tl.where(empty, lead, p_next)
    c_next = c + (p_next - p)
    wrap = c_next >= CH
    s_next = s + wrap.to(tl.int32)
    c_next = tl.where(wrap, 0, c_next)
    lap_next = lap + (s_next >= NSUB).to(tl.int32)
    s_next = tl.where(s_next >= NSUB, 0, s_next)
    return (
        done,
        tl.where(done, p_next, p),
        tl.where(done, (p_next < lead).to(tl.int32), k + 1),
        tl.where(done, c_next, c),
        tl.where(done, s_next, s),
        tl.where(done, lap_next, lap),
    )


@triton.jit
def _split_scores(x, y, rise, fall, COEF, POWERS: tl.constexpr, NP: tl.constexpr, DOT: tl.constexpr):
    """Σ_p β_p λ^(p·(t − n)) Σ_d x_td y_nd^p with rise = e^(−ε(t − a)), fall = e^(−ε(a − n)): one dot of
    x per power, its rows scaled by β_p rise^p (x enters the dots unscaled: one operand, not one per
    power, held in registers through the loop).

    With fp32-exact dots (``ieee``, ``tf32x3``) the keys' factor goes into the operand, (fall_n y_n)^p.
    The 10-bit-mantissa modes round each operand, so there it stays out, (β_p rise^p ⊗ fall^p) ⊙ (x · y^p):
    the stored levels' products are then exact, as in v1, and the pulse widths and the converter's
    pass mask follow the reference (with it in the operand, fp16 gradients were 12 % off)."""
    out = tl.zeros((x.shape[0], y.shape[0]), tl.float32)
    exact: tl.constexpr = (DOT == "ieee") | (DOT == "tf32x3")
    if exact:
        base = y * fall[:, None]
    else:
        base = y
    power = tl.full(y.shape, 1.0, tl.float32)
    rise_p = tl.full(rise.shape, 1.0, tl.float32)
    fall_p = tl.full(fall.shape, 1.0, tl.float32)
    for p in tl.static_range(1, NP + 1):
        power = power * base
        rise_p = rise_p * rise
        fall_p = fall_p * fall
        if (POWERS >> p) & 1:
            scale = (tl.load(COEF + p) * rise_p)[:, None]
            if exact:
                out += scale * _dot(x, tl.trans(power), DOT)
            else:
                out += (scale * fall_p[None, :]) * _dot(x, tl.trans(power), DOT)
    return out


@triton.jit
def _split_weighted(w, y, rise, fall, COEF, POWERS: tl.constexpr, NP: tl.constexpr, DOT: tl.constexpr):
    """Σ_n w_tn Σ_p β_p λ^(p·(t − n)) y_nd^p = Σ_p β_p rise_t^p · (w · (fall y)^p)_td: one dot per power."""
    out = tl.zeros((w.shape[0], y.shape[1]), tl.float32)
    scaled = y * fall[:, None]
    power = tl.full(y.shape, 1.0, tl.float32)
    rise_p = tl.full(rise.shape, 1.0, tl.float32)
    for p in tl.static_range(1, NP + 1):
        power = power * scaled
        rise_p = rise_p * rise
        if (POWERS >> p) & 1:
            out += (tl.load(COEF + p) * rise_p)[:, None] * _dot(w, power, DOT)
    return out


@triton.jit
def _split_transposed(w, x, y, rise, fall, COEF, POWERS: tl.constexpr, NP: tl.constexpr, DOT: tl.constexpr):
    """Σ_t w_tn Σ_p p·β_p λ^(p·(t − n)) y_nd^(p−1) x_td without the last factor fall_n (the caller's,
    once per program): Σ_p p·β_p (fall y)^(p−1) · (wᵀ · rise^p x)."""
    out = tl.zeros(y.shape, tl.float32)
    scaled = y * fall[:, None]
    power = tl.full(y.shape, 1.0, tl.float32)
    rise_p = tl.full(rise.shape, 1.0, tl.float32)
    for p in tl.static_range(1, NP + 1):
        rise_p = rise_p * rise
        if (POWERS >> p) & 1:
            out += ((p * tl.load(COEF + p)) * power) * _dot(tl.trans(w), x * rise_p[:, None], DOT)
        power = power * scaled
    return out


@triton.jit
def _first(x, y, rise, fall, decay, COEF, POWERS: tl.constexpr, NP: tl.constexpr, LEAK: tl.constexpr, DOT: tl.constexpr):
    """Σ_p β_p λ^(p·age) x · y^p for a (BT, BN) tile in the leakage form ``LEAK`` picks."""
    if LEAK == 1:
        out = _split_scores(x, y, rise, fall, COEF, POWERS, NP, DOT)
    else:
        out = _scores(x, y, decay, COEF, POWERS, NP, LEAK >= 2, DOT)
    return out


@triton.jit
def _second(w, y, rise, fall, decay, COEF, POWERS: tl.constexpr, NP: tl.constexpr, LEAK: tl.constexpr, DOT: tl.constexpr):
    """Σ_n w_tn Σ_p β_p λ^(p·age) y_n^p for a (BT, BN) weight tile, in the leakage form ``LEAK`` picks."""
    if LEAK == 1:
        out = _split_weighted(w, y, rise, fall, COEF, POWERS, NP, DOT)
    else:
        out = _weighted(w, y, decay, COEF, POWERS, NP, LEAK >= 2, DOT)
    return out


@triton.jit
def _rise(t, anchor, eps, LEAK: tl.constexpr):
    """e^(−ε(t − anchor)) for queries t ≥ anchor (≤ 1) with LEAK == 1, else ones."""
    if (LEAK == 1) | (LEAK == 3):
        out = tl.exp(-eps * (t - anchor).to(tl.float32))
    else:
        out = tl.full(t.shape, 1.0, tl.float32)
    return out


@triton.jit
def _fall(n, anchor, inside, eps, LIMIT: tl.constexpr, LEAK: tl.constexpr):
    """e^(−ε(anchor − n)) for keys n with LEAK 1 or 3: 0 outside the keys, the exponent capped at
    ε·LIMIT (no key past anchor + LIMIT is visible); else ones. Once per program (the dK/dV kernel)."""
    if (LEAK == 1) | (LEAK == 3):
        out = tl.where(inside, tl.exp(eps * tl.minimum(n - anchor, LIMIT).to(tl.float32)), 0.0)
    else:
        out = tl.full(n.shape, 1.0, tl.float32)
    return out


@triton.jit
def _ramp(size: tl.constexpr, rate, LEAK: tl.constexpr):
    """e^(rate·j) for j < size (LEAK 1 or 3), else ones: built once per program, so that a factor for a
    run of consecutive indices costs one scalar exp per tile (:func:`_shifted`), not one per element
    of every layout that holds it."""
    if (LEAK == 1) | (LEAK == 3):
        out = tl.exp(rate * tl.arange(0, size).to(tl.float32))
    else:
        out = tl.full((size,), 1.0, tl.float32)
    return out


@triton.jit
def _shifted(ramp, exponent, LEAK: tl.constexpr):
    """e^exponent · ramp: a factor e^(rate·(start + j)) from its run's start (exponent = rate·start)."""
    if (LEAK == 1) | (LEAK == 3):
        out = tl.exp(exponent) * ramp
    else:
        out = ramp
    return out


@triton.jit
def _keys(K, V, bh, n, end, d, KT, D, M, RING: tl.constexpr):
    """k~ and v~ of keys n (0 past ``end``): row n of a (BH, KT, D) sequence, or with RING of the M slots of
    a generation memory, key n in slot n mod M (:func:`forward_kernel`'s one-query form)."""
    stored = (n < end)[:, None] & (d < D)[None, :]
    rows = n % M if RING else n
    key_offsets = bh * KT * D + rows[:, None] * D + d[None, :]
    k = tl.load(K + key_offsets, mask=stored, other=0.0).to(tl.float32)
    v = tl.load(V + key_offsets, mask=stored, other=0.0).to(tl.float32)
    return k, v


@triton.jit
def _chunk_scores(K, V, bh, t, t0, d, q, q_sum, rise, key_ramp, round_, s, c, T, KT, D, M, R, eps, COEF, beta0,
                  POWERS: tl.constexpr, NP: tl.constexpr, CONST: tl.constexpr, LEAK: tl.constexpr,
                  DOT: tl.constexpr, BN: tl.constexpr, RING: tl.constexpr):  # fmt: skip
    """One step of the band walk that the forward and the dQ kernel share: chunk c of sub-tile s in round
    ``round_`` (its keys k~, v~), which keys each query sees, the decay in the form ``LEAK`` picks, and
    the first product S with the cell's constant term."""
    base = round_ * M + s * R
    n0 = base + c * BN
    end = tl.minimum(base + tl.minimum(R, M - s * R), T)
    n = n0 + tl.arange(0, BN)
    k, v = _keys(K, V, bh, n, end, d, KT, D, M, RING)
    visible, decay = _tile(t, n, T, M, eps, LEAK == 2)
    visible = visible & (n < end)[None, :]
    fall = _shifted(key_ramp, eps * (n0 - t0).to(tl.float32), LEAK)  # ≤ e^(ε(BT + BN)): n < t0 + BT visible
    if LEAK == 3:
        decay = rise[:, None] * fall[None, :]
    scores = _first(q, k, rise, fall, decay, COEF, POWERS, NP, LEAK, DOT)
    if CONST:
        scores += beta0 * q_sum[:, None]
    return k, v, visible, decay, fall, scores


@triton.jit(do_not_specialize=["T", "START"])  # a generation step's position: one build, not one per residue
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
    CH,
    START,
    QT,
    KT,
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
    RING: tl.constexpr,
):
    """Readout of one block of BT queries for one (batch, head): Σ_s ADC(Y_s), one flat loop over the
    band's chunks, each sub-tile's partial in fp32 registers until its ADC. With SAVE, the pass mask of
    every visited sub-tile goes to PASS (the launcher zeroes the rest).

    The parallel op: START = 0, Q, OUT, K and V hold QT = KT = T rows per (batch, head). A generation step
    (RING): one query at position START = T − 1, Q and OUT one row each (QT = 1), K and V the memory's
    KT = M slots, key n in slot n mod M (what :class:`gaincell.op.memory.GainCellMemory` writes); every
    position is absolute, so the band, the sub-tiles, the decay and the ADC are the parallel op's."""
    block = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    t0 = block * BT + START
    t = t0 + tl.arange(0, BT)
    d = tl.arange(0, BD)
    rows = (t < T)[:, None] & (d < D)[None, :]
    offsets = bh * QT * D + (t - START)[:, None] * D + d[None, :]
    q = tl.load(Q + offsets, mask=rows, other=0.0).to(tl.float32)
    q_sum = tl.sum(q, 1)
    beta0 = tl.load(COEF)
    out = tl.zeros((BT, BD), tl.float32)
    partial = tl.zeros((BT, BD), tl.float32)
    n_lo = tl.maximum(t0 - M + 1, 0)
    n_hi = tl.minimum(t0 + BT, T)  # exclusive
    lead, rounds, last, total, round0, s = _band(n_lo, n_hi, M, R, CH, NSUB * CH, BN)
    p, k_round = _start(lead, rounds)
    c, lap = p, p * 0  # the first position lies in the first sub-tile (p ≤ lead < CH)
    rise = _rise(t, t0, eps, LEAK)
    key_ramp = _ramp(BN, eps, LEAK)
    for i in range(0, total):
        k, v, visible, decay, fall, scores = _chunk_scores(
            K, V, bh, t, t0, d, q, q_sum, rise, key_ramp, round0 + lap + k_round, s, c, T, KT, D, M, R, eps, COEF,
            beta0, POWERS, NP, CONST, LEAK, DOT, BN, RING,
        )  # fmt: skip
        widths = tl.where(visible, tl.minimum(tl.maximum(scores, 0.0), s_sat), 0.0)
        partial += _second(widths, v, rise, fall, decay, COEF, POWERS, NP, LEAK, DOT)
        if CONST:
            partial += beta0 * tl.sum(widths, 1)[:, None]
        sub_tile = s
        done, p, k_round, c_next, s, lap = _advance(p, k_round, c, s, lap, lead, rounds, last, CH, NSUB)
        if done & ((c + 1 == CH) | (i + 1 == total)):  # the sub-tile's last chunk: its ADC
            levels, passed = _adc(partial * read_scale, low, high, step, origin, QUANT)
            occupied = (sub_tile * R <= t)[:, None]  # a sub-tile with no visible key for t is not converted
            out += tl.where(occupied, levels, 0.0)
            if SAVE:
                _store_passes(PASS, sub_tile, bh, t, passed & occupied, T, BT, BD, WORD)
            partial = tl.zeros((BT, BD), tl.float32)
        c = c_next
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
    CH,
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
    """d loss / d pulses for one block of queries: the forward's flat loop, S recomputed, each chunk's
    output gradient masked by its sub-tile's saved ADC pass bits."""
    block = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    t0 = block * BT
    t = t0 + tl.arange(0, BT)
    d = tl.arange(0, BD)
    rows = (t < T)[:, None] & (d < D)[None, :]
    offsets = bh * T * D + t[:, None] * D + d[None, :]
    q = tl.load(Q + offsets, mask=rows, other=0.0).to(tl.float32)
    q_sum = tl.sum(q, 1)
    grad_out = tl.load(GRAD + offsets, mask=rows, other=0.0).to(tl.float32)
    beta0 = tl.load(COEF)
    grad_beta0 = tl.load(GCOEF)
    dq = tl.zeros((BT, BD), tl.float32)
    n_lo = tl.maximum(t0 - M + 1, 0)
    n_hi = tl.minimum(t0 + BT, T)
    lead, rounds, last, total, round0, s = _band(n_lo, n_hi, M, R, CH, NSUB * CH, BN)
    p, k_round = _start(lead, rounds)
    c, lap = p, p * 0  # the first position lies in the first sub-tile (p ≤ lead < CH)
    rise = _rise(t, t0, eps, LEAK)
    key_ramp = _ramp(BN, eps, LEAK)
    for _ in range(0, total):
        k, v, visible, decay, fall, scores = _chunk_scores(
            K, V, bh, t, t0, d, q, q_sum, rise, key_ramp, round0 + lap + k_round, s, c, T, T, D, M, R, eps, COEF,
            beta0, POWERS, NP, CONST, LEAK, DOT, BN, False,
        )  # fmt: skip
        unsaturated = visible & (scores >= 0.0) & (scores <= s_sat)
        g = grad_out * _load_passes(PASS, s, bh, t, rows, T, BD, WORD)
        grad_scores = _first(g, v, rise, fall, decay, GCOEF, GPOWERS, GNP, LEAK, DOT)
        if GCONST:
            grad_scores += grad_beta0 * tl.sum(g, 1)[:, None]
        grad_scores = tl.where(unsaturated, grad_scores * read_scale, 0.0)
        dq += _second(grad_scores, k, rise, fall, decay, GCOEF, GPOWERS, GNP, LEAK, DOT)
        if GCONST:
            dq += grad_beta0 * tl.sum(grad_scores, 1)[:, None]
        _, p, k_round, c, s, lap = _advance(p, k_round, c, s, lap, lead, rounds, last, CH, NSUB)
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
    """d loss / d k~ and d v~ for one chunk of ≤ BN keys inside one physical sub-tile (one ADC mask),
    looping over the queries that see it, the decay anchored at the chunk's first key; program 0
    indexes (round, sub-tile, chunk of CHUNKS per sub-tile) as in v1."""
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
        k, v = _keys(K, V, bh, n, n1, d, T, D, M, False)
        beta0 = tl.load(COEF)
        grad_beta0 = tl.load(GCOEF)
        dk = tl.zeros((BN, BD), tl.float32)
        dv = tl.zeros((BN, BD), tl.float32)
        fall = _fall(n, n0, n < n1, eps, BN, LEAK)
        query_ramp = _ramp(BT, -eps, LEAK)
        for t0 in range(n0, tl.minimum(n1 - 1 + M, T), BT):
            t = t0 + tl.arange(0, BT)
            rows = (t < T)[:, None] & (d < D)[None, :]
            offsets = bh * T * D + t[:, None] * D + d[None, :]
            q = tl.load(Q + offsets, mask=rows, other=0.0).to(tl.float32)
            g = tl.load(GRAD + offsets, mask=rows, other=0.0).to(tl.float32)
            g = g * _load_passes(PASS, s, bh, t, rows, T, BD, WORD)
            visible, decay = _tile(t, n, T, M, eps, LEAK == 2)
            visible = visible & (n < n1)[None, :]
            rise = _shifted(query_ramp, -eps * (t0 - n0).to(tl.float32), LEAK)
            if LEAK == 3:
                decay = rise[:, None] * fall[None, :]
            scores = _first(q, k, rise, fall, decay, COEF, POWERS, NP, LEAK, DOT)
            if CONST:
                scores += beta0 * tl.sum(q, 1)[:, None]
            widths = tl.where(visible, tl.minimum(tl.maximum(scores, 0.0), s_sat), 0.0)
            unsaturated = visible & (scores >= 0.0) & (scores <= s_sat)
            grad_scores = _first(g, v, rise, fall, decay, GCOEF, GPOWERS, GNP, LEAK, DOT)
            if GCONST:
                grad_scores += grad_beta0 * tl.sum(g, 1)[:, None]
            grad_scores = tl.where(unsaturated, grad_scores * read_scale, 0.0)
            if LEAK == 1:
                dv += _split_transposed(widths, g, v, rise, fall, GCOEF, GPOWERS, GNP, DOT)
                dk += _split_transposed(grad_scores, q, k, rise, fall, GCOEF, GPOWERS, GNP, DOT)
            else:
                dv += _transposed(widths, g, v, decay, GCOEF, GPOWERS, GNP, LEAK >= 2, DOT)
                dk += _transposed(grad_scores, q, k, decay, GCOEF, GPOWERS, GNP, LEAK >= 2, DOT)
        if LEAK == 1:  # the keys' last decay factor, left out of the loop
            dk = dk * fall[:, None]
            dv = dv * fall[:, None]
        tl.store(DK + key_offsets, dk, mask=stored)
        tl.store(DV + key_offsets, dv * read_scale, mask=stored)


@triton.jit
def _quantised(x, low, high, step):
    """The front end's quantiser on SPEC's zero-origin grid: step · round_half_even(clamp(x) / step)."""
    return _round_half_even(tl.math.div_rn(tl.minimum(tl.maximum(x, low), high), step)) * step


@triton.jit(do_not_specialize=["slot"])
def step_front_end_kernel(
    Q,
    K,
    V,
    A,
    B,
    PULSES,
    KEYS,
    VALUES,
    slot,
    H,
    D,
    M,
    q_low,
    q_high,
    q_step,
    kv_low,
    kv_high,
    kv_step,
    offset,
    BD: tl.constexpr,
):
    """A generation step's front end for one (batch, head), one token: each of q, k, v through its scaler
    a·x + b and quantiser, the pulses out, and k~, v~ (less the offset) written into ``slot`` of the memory's
    (BH, M, D) arrays; :func:`gaincell.op.kernels.step.encode` in one launch. A and B hold the scalers' a and
    b as (4, H) rows in q, k, v, o order."""
    bh = tl.program_id(0).to(tl.int64)
    h = bh % H
    d = tl.arange(0, BD)
    inside = d < D
    row = bh * D + d
    q = tl.load(Q + row, mask=inside, other=0.0).to(tl.float32)
    k = tl.load(K + row, mask=inside, other=0.0).to(tl.float32)
    v = tl.load(V + row, mask=inside, other=0.0).to(tl.float32)
    q = _quantised(tl.load(A + h) * q + tl.load(B + h), q_low, q_high, q_step)
    k = _quantised(tl.load(A + H + h) * k + tl.load(B + H + h), kv_low, kv_high, kv_step) - offset
    v = _quantised(tl.load(A + 2 * H + h) * v + tl.load(B + 2 * H + h), kv_low, kv_high, kv_step) - offset
    tl.store(PULSES + row, q, mask=inside)
    stored = bh * M * D + slot * D + d
    tl.store(KEYS + stored, k, mask=inside)
    tl.store(VALUES + stored, v, mask=inside)
