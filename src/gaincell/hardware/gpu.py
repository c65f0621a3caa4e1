"""GPU side of the comparison: a memory-roofline model of decode attention, and a local measurement.

SPEC-hardware §6.2/§6.3.2. In autoregressive decoding every step must stream the whole KV cache from
DRAM (SPEC §1), so a step of one attention layer costs

    latency = max(bytes moved / DRAM bandwidth, FLOPs / peak FLOP rate)
    energy  = latency x (TDP - idle power)     the board held at its power limit, above idle, which is
                                               what the §6.2 protocol measures: (power - idle) x time
    DRAM floor = bytes moved x DRAM energy per bit   (reported beside it: the memory's share alone)

How many bytes a step moves depends on the kernel, so the kernel is an explicit choice:

- ``eager`` (baseline ``paper``): what the authors timed (their script tests_divers/test_speed_energy.py:
  fp32 ``torch.rand`` data, two ``torch.matmul`` calls without softmax on a cache laid out
  (batch, tokens, heads, D)). ``matmul`` cannot fold that strided layout into a batched GEMM without a
  contiguous copy, so K and V each cross DRAM three times per step (read, write the copy, read it).
- ``fused`` (baseline ``fused``): one pass over a head-major cache, as ``scaled_dot_product_attention``
  / flash-decoding does; by default in fp16. The honest "optimised GPU" baseline.

:func:`measure` runs the §6.2 protocol on the user's machine: a KV cache of the configured size, decode
steps that write the new token into its slot (circular, as the chip does) and attend over the window,
warm-up, repetitions and the median; energy from NVML (CUDA) or RAPL (CPU) minus idle power, each
read over a window of about a second (:mod:`~gaincell.hardware.meters` says why).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gaincell.errors import GainCellError
from gaincell.hardware.constants import GpuDevice, load_gpus
from gaincell.hardware.meters import EnergyAboveIdle, EnergyMeter, NvmlMeter, RaplMeter, energy_above_idle
from gaincell.validation import check_choice, check_int, check_positive

DTYPE_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2}
KV_PASSES: dict[str, int] = {"eager": 3, "fused": 1}  # DRAM passes over K and V per step (see above)
BASELINES: dict[str, tuple[str, str]] = {"paper": ("eager", "fp32"), "fused": ("fused", "fp16")}
_ALIASES = {"4090": "rtx4090", "rtx-4090": "rtx4090", "jetson": "jetson-nano", "nano": "jetson-nano"}


@dataclass(frozen=True)
class DecodeWorkload:
    """One attention layer's decode step on a GPU: B sequences, H heads, head size D, M cached tokens."""

    batch: int
    heads: int
    head_dim: int
    window: int
    dtype: str = "fp32"
    kernel: str = "eager"

    def __post_init__(self) -> None:
        for name in ("batch", "heads", "head_dim", "window"):
            check_int(f"{name} (--{name.replace('_', '-')})", getattr(self, name), 1)
        check_choice("--dtype", self.dtype, sorted(DTYPE_BYTES))
        check_choice("kernel", self.kernel, sorted(KV_PASSES))

    @property
    def kv_bytes(self) -> int:
        """One read of the cached K and V: 2 x B x H x M x D elements."""
        return 2 * self.batch * self.heads * self.window * self.head_dim * DTYPE_BYTES[self.dtype]

    @property
    def bytes_per_step(self) -> int:
        """DRAM traffic of one step: KV passes + the new k, v written + q read and output written.

        ``eager`` also writes and reads back the score tensor (B x H x M) between its two matmuls.
        """
        element = DTYPE_BYTES[self.dtype]
        small = 4 * self.batch * self.heads * self.head_dim * element  # new k, v; q; output
        scores = 2 * self.batch * self.heads * self.window * element if self.kernel == "eager" else 0
        return KV_PASSES[self.kernel] * self.kv_bytes + small + scores

    @property
    def flops_per_step(self) -> int:
        """Two products of a 1 x D query against M x D keys and values: 4 x B x H x M x D."""
        return 4 * self.batch * self.heads * self.window * self.head_dim


@dataclass(frozen=True)
class GpuEstimate:
    """Roofline latency (s) and energy (J) of one decode step on a named GPU."""

    device: GpuDevice
    workload: DecodeWorkload
    latency_step: float
    energy_step: float
    dram_energy_step: float
    bound: str  # "memory" or "compute"

    @property
    def latency_per_sequence_token(self) -> float:
        return self.latency_step / self.workload.batch

    @property
    def energy_per_sequence_token(self) -> float:
        return self.energy_step / self.workload.batch


def peak_flops(device: GpuDevice, dtype: str) -> float:
    """Dense peak for the dtype: FP32 non-tensor for fp32, FP16 tensor for fp16/bf16."""
    return device.peak_fp32 if dtype == "fp32" else device.peak_fp16


def roofline_time(device: GpuDevice, bytes_moved: float, flops: float, dtype: str) -> tuple[float, str]:
    """max(bytes / bandwidth, FLOPs / peak) and which bound it is (SPEC-hardware §6.3.2)."""
    memory_time = bytes_moved / device.bandwidth
    compute_time = flops / peak_flops(device, dtype)
    return (memory_time, "memory") if memory_time >= compute_time else (compute_time, "compute")


def board_energy(device: GpuDevice, seconds: float) -> float:
    """Energy above idle while busy: time x (TDP - idle), the quantity the §6.2 protocol measures."""
    return seconds * max(device.tdp - device.idle_power, 0.0)


def roofline(device: GpuDevice, workload: DecodeWorkload) -> GpuEstimate:
    """Memory-roofline estimate of one decode step of one attention layer (SPEC-hardware §6.3.2)."""
    latency, bound = roofline_time(device, workload.bytes_per_step, workload.flops_per_step, workload.dtype)
    dram = workload.bytes_per_step * 8 * device.dram_energy_per_bit
    return GpuEstimate(device, workload, latency, board_energy(device, latency), dram, bound)


def resolve_gpus(names: Iterable[str] | None) -> list[GpuDevice]:
    """``--gpu`` values (repeatable, comma lists, a few aliases) to devices; ``None`` means all."""
    devices = load_gpus()
    if not names:
        return list(devices.values())
    chosen: list[GpuDevice] = []
    for item in names:
        for raw in item.split(","):
            key = raw.strip().lower().replace("_", "-").replace(" ", "-")
            if not key:
                continue
            key = _ALIASES.get(key, key)
            if key not in devices:
                raise GainCellError(f"--gpu: unknown device {raw.strip()!r}; choose from {sorted(devices)}")
            if devices[key] not in chosen:
                chosen.append(devices[key])
    if not chosen:
        raise GainCellError(f"--gpu: no device named; choose from {sorted(devices)}")
    return chosen


# ---------------------------------------------------------------------------------------------------
# Local measurement (SPEC-hardware §6.2 protocol on the user's machine)


@dataclass(frozen=True)
class Measurement:
    """The §6.2 protocol's result on this machine: latency per step (median) and energy above idle."""

    device: str
    workload: DecodeWorkload
    steps: int
    repetitions: int
    warmup: int
    latency_step: float  # median over repetitions of the mean step time
    latency_step_min: float
    latency_step_max: float
    energy_step: float | None  # (energy - idle power x time) per step; None: no meter, or below its resolution
    idle_power: float | None
    energy_method: str
    energy_window: dict | None = None  # the counter's raw numbers (meters.EnergyAboveIdle.record)

    @property
    def latency_per_sequence_token(self) -> float:
        return self.latency_step / self.workload.batch

    @property
    def energy_per_sequence_token(self) -> float | None:
        return None if self.energy_step is None else self.energy_step / self.workload.batch


def _decode_step(workload: DecodeWorkload, device: str) -> Callable[[int], object]:
    """Build a KV cache of the workload's size and return ``step(t)``: write slot t mod M, attend.

    ``fused``: head-major cache (B, H, M, D) and ``scaled_dot_product_attention``. ``eager``: the
    authors' layout (B, M, H, D) and two ``matmul`` calls without softmax, as in their script.
    """
    import torch

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[workload.dtype]
    b, h, m, d = workload.batch, workload.heads, workload.window, workload.head_dim
    generator = torch.Generator(device="cpu").manual_seed(0)

    def random(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(device=device, dtype=dtype)

    query, new_k, new_v = random(b, h, 1, d), random(b, h, d), random(b, h, d)
    if workload.kernel == "fused":
        k_cache, v_cache = random(b, h, m, d), random(b, h, m, d)

        def step(t: int) -> torch.Tensor:
            slot = t % m
            k_cache[:, :, slot] = new_k
            v_cache[:, :, slot] = new_v
            return torch.nn.functional.scaled_dot_product_attention(query, k_cache, v_cache)

    else:
        k_cache, v_cache = random(b, m, h, d), random(b, m, h, d)

        def step(t: int) -> torch.Tensor:
            slot = t % m
            k_cache[:, slot] = new_k
            v_cache[:, slot] = new_v
            scores = torch.matmul(query, k_cache.transpose(1, 2).transpose(-1, -2))
            return torch.matmul(scores, v_cache.transpose(1, 2))

    return step


def measure(
    workload: DecodeWorkload,
    device: str = "cpu",
    steps: int = 20,
    repetitions: int = 5,
    warmup: int = 5,
    energy_seconds: float = 1.0,
    meter: EnergyMeter | None = None,
    threads: int | None = None,
) -> Measurement:
    """Run the SPEC-hardware §6.2 protocol here: warm-up, timed repetitions, median, idle subtraction.

    Each repetition times ``steps`` consecutive decode steps (synchronising CUDA before and after);
    the step latency is the median over repetitions of the mean step time. Energy, after them: idle power
    over ``energy_seconds``, then ``steps``-step runs for ``energy_seconds``, above idle per step
    (:func:`~gaincell.hardware.meters.energy_above_idle`); ``None`` when the net is within the counter's
    resolution or there is no meter (CPU without RAPL, CUDA without pynvml), ``energy_method`` saying why.
    ``threads`` sets torch's CPU threads for the run only (fewer than cores avoids oversubscription).
    """
    import torch

    for name, value, low in (
        ("--measure-steps", steps, 1),
        ("--measure-repeats", repetitions, 1),
        ("--measure-warmup", warmup, 0),
    ):
        check_int(name, value, low)
    if threads is not None:
        check_int("--measure-threads", threads, 1)
    check_positive("--measure-energy-s", energy_seconds)
    check_choice("--measure-device", device, ("cpu", "cuda"))
    label, meter, reason = _device_and_meter(device, threads, meter)
    _check_cache_fits(workload, device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        per_step, energy = _timed_run(workload, device, steps, repetitions, warmup, energy_seconds, meter, sync)
    finally:
        torch.set_num_threads(previous_threads)
    return Measurement(
        label,
        workload,
        steps,
        repetitions,
        warmup,
        statistics.median(per_step),
        min(per_step),
        max(per_step),
        None if energy is None else energy.joules_per_step,
        None if energy is None else energy.idle.power_w,
        _energy_method(meter, reason, energy),
        None if energy is None else energy.record(),
    )


def _energy_method(meter: EnergyMeter | None, reason: str, energy: EnergyAboveIdle | None) -> str:
    """How the energy was read, or why there is none: no meter, or a net within the counter's resolution."""
    if meter is None:
        return f"unavailable: {reason}"
    method = f"{meter.name} minus idle power"
    if energy is not None and energy.below_resolution:
        seen = f"{energy.idle.updates} and {energy.active.updates} counter updates in the idle and running windows"
        if energy.net_joules is not None:
            seen = f"net {energy.net_joules:.3g} J ± {energy.noise_joules:.3g} J over {energy.active.span_s:.2f} s"
        method += f": below the counter's resolution ({seen}); energy_window has the raw numbers"
    return method


def _check_cache_fits(workload: DecodeWorkload, device: str) -> None:
    """The measured step keeps a K and V cache of the workload's size on ``device``: refuse one it cannot hold
    (``--window 100000000 --heads 64`` would ask the allocator for 105 TB)."""
    from gaincell.devices import check_fits

    w = workload
    check_fits(
        "--measure",
        f"a K and V cache of B={w.batch}, H={w.heads}, M={w.window}, D={w.head_dim} in {w.dtype}",
        w.kv_bytes,
        device,
        "use a smaller --window, --heads or --batch",
    )


def _device_and_meter(device: str, threads: int | None, meter: EnergyMeter | None):
    """The device's label, the energy meter to read (the given one, or NVML / RAPL), and why there is none."""
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():
            raise GainCellError("--measure-device cuda: no CUDA device is available here; use cpu")
        if meter is not None:
            return torch.cuda.get_device_name(0), meter, ""
        return torch.cuda.get_device_name(0), *NvmlMeter.open(torch.cuda.current_device())
    label = f"cpu ({platform.machine()}, {threads or torch.get_num_threads()} threads, {os.cpu_count()} cores)"
    return (label, meter, "") if meter is not None else (label, *RaplMeter.open())


def _timed_run(
    workload: DecodeWorkload,
    device: str,
    steps: int,
    repetitions: int,
    warmup: int,
    energy_seconds: float,
    meter: EnergyMeter | None,
    sync: Callable[[], None],
):
    """Warm-up, timed repetitions, then (with a meter) the energy windows: (per-step times, EnergyAboveIdle)."""
    import torch

    step = _decode_step(workload, device)
    with torch.inference_mode():
        for t in range(warmup):
            step(t)
        sync()
        per_step = []
        t = warmup
        for _ in range(repetitions):
            sync()
            begin = time.perf_counter()
            for _ in range(steps):
                step(t)
                t += 1
            sync()
            per_step.append((time.perf_counter() - begin) / steps)
        if meter is None:
            return per_step, None
        position = [t]

        def work() -> None:
            for _ in range(steps):
                step(position[0])
                position[0] += 1
            sync()

        return per_step, energy_above_idle(meter, work, steps, energy_seconds)
