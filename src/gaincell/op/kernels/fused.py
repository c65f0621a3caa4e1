"""The fused form of the parallel analog core: three Triton kernels, no T×T tensor, no band in memory.

It computes what :func:`~gaincell.op.kernels.banded.banded_readout` computes (and
:mod:`gaincell.op.equations` writes out) for front-end outputs (Q, k~, v~): the first product with
leakage, the charge-to-pulse converter, the second product per physical sub-tile, one ADC per
occupied sub-tile, the digital sum. Why a kernel: on a GPU the banded form is dozens of small
launches per block of queries; here one launch per pass holds each sub-tile's partial sum in
registers until its ADC (the source is :mod:`~gaincell.op.kernels.fused_kernels`).

- Forward: grid (query blocks, B·H). It writes the readout and, when a gradient is needed, the ADC
  pass mask of every sub-tile, one bit per output (int32 words, (sub-tiles, B·H, T, D/32): an
  eighth of the banded form's bytes).
- Backward: STE through the ADC (where its input was inside [low, high]) and through the converter
  (where 0 ≤ S ≤ S_sat), with the config's gradient model (surrogate: the linear cell α·y~, SPEC §3.4;
  or exact). One kernel for the pulses over query blocks, one for k~ and v~ over chunks of keys that
  each lie in one sub-tile, looping over the queries that see them; S is recomputed, not stored.
- Precision: ``auto`` by default: ``tf32x3`` on CUDA (measured on an NVIDIA H200, 2026-12-04,
  ``benchmarks/results/device-run-h200-2026-12-04`` call1/call3: the fastest mode with no output a
  step off in the GPU check, 8.8 ms fwd+bwd at B=8, H=12, T=M=1024 where ``ieee`` took 26.9 ms, slower
  than the torch form), ``ieee`` (fp32 products) under the interpreter. ``ieee``, ``tf32``,
  ``tf32x3``, ``fp16`` and ``bf16`` are the named modes (:data:`PRECISIONS`, :func:`set_precision`,
  ``$GAINCELL_TRITON_PRECISION``), all accumulating in fp32. The ADC rounds, so a dot's rounding
  can move an output by one ADC step; the tests bound how often (``ieee`` within the banded form's
  rule; the share for ``fp16`` is measured by the tests, the others need a GPU).
- Variant: ``v2`` by default (:mod:`~gaincell.op.kernels.fused_kernels_v2`: one flat pipelinable loop
  over the band, the decay factorised around an anchor). The second H200 run (2026-12-04,
  ``benchmarks/results/device-run-h200-2026-12-04-second``) held it to the rule on all 12 geometries
  of the GPU check (48 of 48 pass, tf32x3 and ieee) and timed it 1.03–1.11× faster than ``v1`` in
  forward + backward (fp16/bf16/tf32/tf32x3, B = 8 and 1, T = 1024–16384). ``v1`` (sub-tile → round →
  chunk loops, direct per-tile decay) stays selectable for side-by-side timing (:data:`VARIANTS`,
  :func:`set_variant`, :func:`variant`, ``$GAINCELL_TRITON_VARIANT``).
- Not here (the dispatcher falls back to the banded form): read noise, cell variability, float64,
  cells whose polynomial has degree > :data:`MAX_DEGREE` (the fitted sigmoid and exp cells).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from dataclasses import dataclass

import torch

from gaincell.chip.cells import build_cell
from gaincell.chip.config import GainCellConfig
from gaincell.errors import GainCellError

#: Highest power of the cell polynomial the kernels unroll (linear 1, paper 3, cubic 3, quintic 5).
MAX_DEGREE = 5
#: Dot precisions: ``ieee`` (fp32 operands), ``tf32``, ``tf32x3`` (tf32 tensor cores, the latter with
#: error compensation), ``fp16``, ``bf16`` (operands rounded to 16 bits; fp32 accumulation).
PRECISIONS = ("ieee", "tf32", "tf32x3", "fp16", "bf16")
#: What ``auto`` (the default) means: on CUDA the fastest mode measured within tolerance (H200,
#: 2026-12-04: tf32x3, no output a step off; ieee was slower than the torch form), else ieee.
AUTO_PRECISION = {"cuda": "tf32x3", "interpreter": "ieee"}
#: Kernel versions: ``v1`` the first (sub-tile → round → chunk loops, direct per-tile decay), ``v2`` (one flat
#: loop over the band, the decay factorised around an anchor; the default since a GPU run checked it exact and
#: timed it faster than v1, 2026-12-04).
VARIANTS = ("v1", "v2")

_precision = os.environ.get("GAINCELL_TRITON_PRECISION", "auto") or "auto"
_variant = os.environ.get("GAINCELL_TRITON_VARIANT", "v2") or "v2"


def set_precision(name: str) -> None:
    """Set the dot precision of the fused kernels for every later call (``auto`` or one of :data:`PRECISIONS`)."""
    global _precision
    _precision = _check_precision(name, "precision")


@contextlib.contextmanager
def _temporarily(setting: str, value: str):
    """A module setting (``_precision``, ``_variant``) set inside a ``with`` block, then the previous value again."""
    previous = globals()[setting]
    globals()[setting] = value
    try:
        yield
    finally:
        globals()[setting] = previous


def precision(name: str):
    """The fused kernels' dot precision inside a ``with`` block, then the previous one again."""
    return _temporarily("_precision", _check_precision(name, "precision"))


def resolve_precision(name: str, device: torch.device) -> str:
    """The mode ``name`` runs as on ``device``: ``auto`` is :data:`AUTO_PRECISION`'s choice, the rest themselves."""
    if name != "auto":
        return name
    return AUTO_PRECISION["cuda" if torch.device(device).type == "cuda" else "interpreter"]


def set_variant(name: str) -> None:
    """Set which kernels run (one of :data:`VARIANTS`) for every later call."""
    global _variant
    _variant = _check_variant(name, "variant")


def variant(name: str):
    """The fused kernels' variant inside a ``with`` block, then the previous one again."""
    return _temporarily("_variant", _check_variant(name, "variant"))


def _check_variant(name, where: str) -> str:
    if name not in VARIANTS:
        raise GainCellError(f"{where} must be one of {', '.join(VARIANTS)}, got {name!r}")
    return name


def _check_precision(name, where: str) -> str:
    if name != "auto" and name not in PRECISIONS:
        raise GainCellError(f"{where} must be auto or one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


def kernels(version: str = "v2"):
    """The kernels module of ``version`` (:mod:`~gaincell.op.kernels.fused_kernels` for v1,
    :mod:`~gaincell.op.kernels.fused_kernels_v2` for v2), imported on first use so that gaincell
    imports without triton.

    Triton decides when it is first imported whether ``@triton.jit`` gives compiled or interpreted
    functions (``TRITON_INTERPRET=1``: CPU tensors, slow, how the tests run the kernels), so one
    process runs the kernels in one mode only; the tests use a worker process per mode.
    """
    suffix = "" if _check_variant(version, "variant") == "v1" else "_v2"
    return importlib.import_module(f"gaincell.op.kernels.fused_kernels{suffix}")


@dataclass(frozen=True)
class FusedPlan:
    """What the kernels need from a config: coefficients (tensors built per device), structure (constexprs)."""

    coefficients: tuple[float, ...]  # β_0..β_NP of g
    grad_coefficients: tuple[float, ...]  # of the gradient model: g itself (exact) or (0, α) (surrogate)
    leakage: float
    window: int
    subtile_rows: int
    n_subtiles: int
    s_sat: float
    read_scale: float  # readout gain / S_sat: Y = read_scale · Σ_n (S_sat·P_tn) h(v~_n)
    adc_low: float
    adc_high: float
    adc_step: float | None
    adc_origin: float

    @staticmethod
    def _structure(coefficients) -> dict:
        powers = sum(1 << p for p, c in enumerate(coefficients) if p and c)
        return {"POWERS": powers, "NP": max(powers.bit_length() - 1, 1), "CONST": bool(coefficients[0])}

    def constexprs(self, version: str = "v2", tile: int = 16) -> dict:
        """The kernels' structure constexprs; ``LEAK`` is on/off for v1, :func:`leak_mode` for v2."""
        main, grad = self._structure(self.coefficients), self._structure(self.grad_coefficients)
        leak = bool(self.leakage) if version == "v1" else leak_mode(self.leakage, max(main["NP"], grad["NP"]), tile)
        return {**main, **{f"G{key}": value for key, value in grad.items()}, "LEAK": leak}


#: v2 factorises the decay around an anchor where degree·ε·tile ≤ SPLIT_LIMIT: every factor a visible
#: key meets then stays within e^±2·SPLIT_LIMIT (e^8 ≈ 3000: inside fp16's range with room, so every dot
#: precision keeps the factors' precision).
SPLIT_LIMIT = 4.0


def leak_mode(leakage: float, degree: int, tile: int) -> int:
    """v2's decay form: 0 no leakage; 1 factorised (``degree``·ε·``tile`` ≤ :data:`SPLIT_LIMIT`, the
    largest exponent a factor reaches); 2 the direct per-tile e^(−ε·age) of v1 (large leakage).
    (:func:`_launch` turns 1 into 3 for gradient kernels outside :data:`SPLIT_BACKWARD`.)"""
    if not leakage:
        return 0
    return 1 if degree * leakage * tile <= SPLIT_LIMIT else 2


@functools.lru_cache(maxsize=64)
def unsupported(config: GainCellConfig) -> str | None:
    """Why the fused kernels cannot compute ``config`` (a sentence), or None (noise and gains are the dispatcher's)."""
    degree = build_cell(config.cell).degree
    if degree > MAX_DEGREE:
        return f"the {config.cell.kind} cell is a polynomial of degree {degree}; the fused kernels unroll up to {MAX_DEGREE}"
    return None


@functools.lru_cache(maxsize=64)
def make_fused_plan(config: GainCellConfig) -> FusedPlan:
    cell, periphery, adc = build_cell(config.cell), config.periphery, config.periphery.adc
    coefficients = tuple(float(c) for c in cell.coefficients)
    surrogate = config.gradient == "surrogate" and not cell.is_linear
    return FusedPlan(
        coefficients=coefficients,
        grad_coefficients=(0.0, float(cell.alpha)) if surrogate else coefficients,
        leakage=float(config.leakage),
        window=config.window,
        subtile_rows=config.subtile_rows,
        n_subtiles=config.n_subtiles,
        s_sat=float(periphery.s_sat),
        read_scale=float(periphery.readout_gain / periphery.s_sat),
        adc_low=float(adc.low),
        adc_high=float(adc.high),
        adc_step=None if adc.levels is None else float(adc.step),
        adc_origin=float(adc.origin),
    )


def _pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << max(n - 1, 0).bit_length())


#: (BT queries, BN keys, warps[, pipeline stages[, registers per thread at most]]; Triton's defaults where left
#: out) per kernel at D ≤ 64, per
#: variant: fp32 (``ieee``) dots run on FMA units with operands replicated across threads, so their tiles
#: stay small (sm_90 builds of 32 × 32 put kilobytes per thread on the stack); tensor-core modes take the
#: largest tiles whose sm_90 builds keep the stack near 150 bytes per thread or less. Read from builds on
#: a CPU, not timed; benchmarks/device_run.py part g times candidates on a GPU.
TILES = {
    "v1": {
        "ieee": {"forward": (32, 16, 4), "grad_queries": (32, 16, 4), "grad_stored": (32, 16, 4)},
        "tensor cores": {"forward": (64, 32, 8), "grad_queries": (32, 64, 8), "grad_stored": (32, 64, 8)},
        # three dots per product: 32 × 64 dK/dV tiles need 272 kB of shared memory, sm_90 has 227 kB
        "tf32x3": {"forward": (64, 32, 8), "grad_queries": (32, 64, 8), "grad_stored": (32, 32, 8)},
    },
    # v1's tiles: of the builds tried (paper cell, exact gradient, D = R = 64), larger ones spill more,
    # e.g. fp16 forward 64 × 64: 224 B of stack per thread against 16 B at 64 × 32; dQ 64 × 64: 1128 B
    "v2": {
        "ieee": {"forward": (32, 16, 4), "grad_queries": (32, 16, 4), "grad_stored": (32, 16, 4)},
        "tensor cores": {"forward": (64, 32, 8), "grad_queries": (32, 64, 8), "grad_stored": (32, 64, 8)},
        "tf32x3": {"forward": (64, 32, 8), "grad_queries": (32, 64, 8), "grad_stored": (32, 32, 8)},
    },
}


def block_sizes(
    plan: FusedPlan, dim: int, interpret: bool, precision: str = "ieee", kernel: str = "forward", version: str = "v2"
) -> dict:
    """Tile sizes (BT queries × BN keys × BD features, WORD bits per saved mask word) and warps of
    ``kernel`` (``forward`` | ``grad_queries`` | ``grad_stored``) in ``version``; tl.dot needs every
    side ≥ 16 on a GPU."""
    features, options = _pow2(dim), ()
    if interpret:
        queries, keys, warps = 16, 16, 4
    else:
        queries, keys, warps, *options = TILES[version][tile_key(version, precision)][kernel]
        if features >= 128:  # twice the columns: half the rows
            queries, keys = max(16, queries // 2), max(16, keys // 2)
        keys = min(keys, _pow2(plan.subtile_rows))
    blocks = {"BT": queries, "BN": keys, "BD": features, "WORD": min(32, features), "num_warps": warps}
    return blocks | dict(zip(("num_stages", "maxnreg"), options, strict=False))


def tile_key(version: str, precision: str) -> str:
    """The entry of :data:`TILES` ``[version]`` that ``precision`` reads (its own, else ``tensor cores``)."""
    return precision if precision in TILES[version] else "tensor cores"


@functools.lru_cache(maxsize=64)
def _coefficients(coefficients: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """β_p as the kernels load them (index p), built once per device instead of a copy per call."""
    return torch.tensor(coefficients, dtype=torch.float32, device=device)


def _scalars(plan: FusedPlan, length: int, dim: int) -> tuple:
    return (length, dim, plan.window, plan.subtile_rows, plan.n_subtiles)


def fused_readout(
    pulses, keys, values, config: GainCellConfig, precision: str | None = None, version: str | None = None
) -> torch.Tensor:
    """The digital sum of the sub-tile ADC outputs for front-end outputs (Q, k~, v~), each (B, H, T, D),
    like :func:`~gaincell.op.kernels.banded.banded_readout` (without noise or gains)."""
    why = unsupported(config)
    if why is not None:
        raise GainCellError(f"kernel='triton' cannot run: {why}")
    if pulses.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise GainCellError(f"kernel='triton' cannot run: it needs CUDA tensors, got {pulses.device.type}")
    if pulses.dtype == torch.float64:
        raise GainCellError("kernel='triton' cannot run: float64 inputs (the kernels compute in float32)")
    precision = _check_precision(_precision if precision is None else precision, "$GAINCELL_TRITON_PRECISION")
    precision = resolve_precision(precision, pulses.device)
    version = _check_variant(_variant if version is None else version, "$GAINCELL_TRITON_VARIANT")
    batch, heads, length, dim = pulses.shape
    if pulses.numel() == 0:  # no program to launch; the graph still connects to the inputs
        return pulses * 0
    flat = [x.reshape(batch * heads, length, dim).contiguous() for x in (pulses, keys, values)]
    with _on(pulses.device):
        readout = _FusedAnalogCore.apply(*flat, make_fused_plan(config), precision, version)
    return readout.view(batch, heads, length, dim).to(pulses.dtype)


def _on(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' (several GPUs in one process)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


#: Dot precisions in which v2's gradient kernels factorise the decay into the products; the others keep
#: v1's per-tile products with the decay tile built from the factors (mode 3, no exp). Read from sm_90
#: builds (paper cell, exact gradient, D = R = 64, v2's tiles, 2026-12-04), stack bytes per thread,
#: factorised against mode 3: tf32x3 dQ 9,392 against 408 (the factorised build collapses to 32
#: registers), tf32 dQ 40 against 32 and dK/dV 248 against 208; fp16 factorised dQ 48, v1 64.
SPLIT_BACKWARD = {"fp16", "bf16"}


def _launch(plan: FusedPlan, dim: int, interpret: bool, precision: str, kernel: str, version: str) -> tuple[dict, dict]:
    """(tile sizes and warps, structure constexprs) of one kernel; v2's decay form depends on its tiles
    and, for the gradient kernels, on the precision (:data:`SPLIT_BACKWARD`)."""
    blocks = block_sizes(plan, dim, interpret, precision, kernel, version)
    structure = plan.constexprs(version, max(blocks["BT"], blocks["BN"]))
    if version == "v2" and kernel != "forward" and structure["LEAK"] == 1 and precision not in SPLIT_BACKWARD:
        structure["LEAK"] = 3  # v1's per-tile products, the decay tile from the anchored factors
    return blocks, structure


def _chunks_per_subtile(plan: FusedPlan, blocks: dict) -> int:
    return -(-plan.subtile_rows // blocks["BN"])


class _FusedAnalogCore(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pulses, keys, values, plan: FusedPlan, precision: str, version: str):
        bh, length, dim = pulses.shape
        interpret = pulses.device.type != "cuda"
        module = kernels(version)
        blocks, structure = _launch(plan, dim, interpret, precision, "forward", version)
        save = any(ctx.needs_input_grad[:3])
        out = torch.empty(bh, length, dim, dtype=torch.float32, device=pulses.device)
        shape = (plan.n_subtiles, bh, length, blocks["BD"] // blocks["WORD"]) if save else (1,)  # untouched without SAVE
        # v1 writes every sub-tile's mask, v2 those its band visits (the others are never read: zero them)
        passes = (torch.empty if version == "v1" else torch.zeros)(shape, dtype=torch.int32, device=pulses.device)
        coefficients = _coefficients(plan.coefficients, pulses.device)
        grid = (-(-length // blocks["BT"]), bh)
        geometry, ring = _scalars(plan, length, dim), {}
        if version == "v2":  # the whole sequence from position 0: START 0, T rows of queries and of keys
            geometry, ring = geometry + (_chunks_per_subtile(plan, blocks), 0, length, length), {"RING": False}
        module.forward_kernel[grid](
            pulses, keys, values, out, passes, coefficients, *geometry,
            plan.leakage, plan.s_sat, plan.read_scale, plan.adc_low, plan.adc_high,
            plan.adc_step or 1.0, plan.adc_origin,
            POWERS=structure["POWERS"], NP=structure["NP"], CONST=structure["CONST"], LEAK=structure["LEAK"],
            QUANT=plan.adc_step is not None, SAVE=save, DOT=precision, **blocks, **ring,
        )  # fmt: skip
        if save:
            ctx.save_for_backward(pulses, keys, values, passes)
            ctx.plan, ctx.precision, ctx.version = plan, precision, version
        return out

    @staticmethod
    def backward(ctx, grad_out):
        pulses, keys, values, passes = ctx.saved_tensors
        with _on(pulses.device):
            grads = _backward(
                ctx.plan, ctx.precision, ctx.version, pulses, keys, values, passes, grad_out.contiguous().float()
            )
        return *grads, None, None, None


def _backward(plan: FusedPlan, precision: str, version: str, pulses, keys, values, passes, grad_out):
    """The two gradient kernels: pulses over query blocks, stored k~ and v~ over chunks of keys."""
    bh, length, dim = pulses.shape
    module = kernels(version)
    interpret = pulses.device.type != "cuda"
    device = pulses.device
    coefficients = _coefficients(plan.coefficients, device)
    grad_coefficients = _coefficients(plan.grad_coefficients, device)
    grad_pulses = torch.empty(bh, length, dim, dtype=torch.float32, device=device)
    grad_keys = torch.zeros(bh, length, dim, dtype=torch.float32, device=device)
    grad_values = torch.zeros(bh, length, dim, dtype=torch.float32, device=device)
    common = (plan.leakage, plan.s_sat, plan.read_scale)
    blocks, structure = _launch(plan, dim, interpret, precision, "grad_queries", version)
    geometry = _scalars(plan, length, dim) + (() if version == "v1" else (_chunks_per_subtile(plan, blocks),))
    module.grad_queries_kernel[(-(-length // blocks["BT"]), bh)](
        pulses, keys, values, grad_out, passes, grad_pulses, coefficients, grad_coefficients,
        *geometry, *common, DOT=precision, **structure, **blocks,
    )  # fmt: skip
    blocks, structure = _launch(plan, dim, interpret, precision, "grad_stored", version)
    chunks = _chunks_per_subtile(plan, blocks)
    rounds = -(-length // plan.window)
    module.grad_stored_kernel[(rounds * plan.n_subtiles * chunks, bh)](
        pulses, keys, values, grad_out, passes, grad_keys, grad_values, coefficients, grad_coefficients,
        *_scalars(plan, length, dim), chunks, *common, DOT=precision, **structure, **blocks,
    )  # fmt: skip
    cast = [g.to(x.dtype) for g, x in ((grad_pulses, pulses), (grad_keys, keys), (grad_values, values))]
    return cast
