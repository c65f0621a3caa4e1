"""Energy counters for the local measurement of :func:`gaincell.hardware.gpu.measure` (SPEC-hardware §6.2).

Both are cumulative counters: NVML's board energy on a CUDA device, RAPL's package energy (Linux
powercap) on the CPU. Opening one returns ``(None, reason)`` rather than raising, so a machine without a
meter still measures latency and the report says why energy is missing.

Why windows (:func:`read_window`, :func:`energy_above_idle`): such a counter moves in updates, NVML's
every few tens of milliseconds, not continuously. Read once before and once after a 65 ms run, it may
not have moved at all while idle power × 65 ms is subtracted: the first H200 run reported −0.08 J a step.
So the counter is polled over a window of about a second, idle and then running, and each window counts
only from its first update to its last (the energy between two updates is exact; only when each update
was seen is uncertain, by the time between two reads). A net energy within that uncertainty is reported
as below the counter's resolution, with the raw numbers, never as a negative energy.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol


class EnergyMeter(Protocol):
    """A cumulative energy counter in joules (NVML board energy, RAPL package energy)."""

    name: str

    def read_joules(self) -> float: ...


class RaplMeter:
    """CPU package energy from Linux powercap (``/sys/class/powercap/intel-rapl:N/energy_uj``)."""

    name = "RAPL package energy (powercap)"

    def __init__(self, domains: list[Path]):
        self._domains = domains
        self._ranges = [int((d / "max_energy_range_uj").read_text()) for d in domains]
        self._last = [self._raw(d) for d in domains]
        self._total_uj = 0

    @staticmethod
    def _raw(domain: Path) -> int:
        return int((domain / "energy_uj").read_text())

    def read_joules(self) -> float:
        for i, domain in enumerate(self._domains):
            now = self._raw(domain)
            delta = now - self._last[i]
            self._total_uj += delta if delta >= 0 else delta + self._ranges[i]  # counter wrapped
            self._last[i] = now
        return self._total_uj * 1e-6

    @classmethod
    def open(cls, root: Path = Path("/sys/class/powercap")) -> tuple[RaplMeter | None, str]:
        """The package domains (``intel-rapl:N``) if readable, else ``None`` and the reason."""
        domains = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
        if not domains:
            return None, f"no RAPL package domain under {root}"
        try:
            return cls(domains), ""
        except (OSError, ValueError) as error:
            return None, f"RAPL not readable ({error})"


class NvmlMeter:
    """Board energy of a CUDA device from NVML's total-energy counter (Volta and later)."""

    name = "NVML total energy counter"

    def __init__(self, index: int):
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.read_joules()  # fails here if the counter is unsupported

    def read_joules(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) * 1e-3

    @classmethod
    def open(cls, index: int) -> tuple[NvmlMeter | None, str]:
        try:
            import pynvml  # noqa: F401
        except ImportError:
            return None, "pynvml is not installed (pip install nvidia-ml-py)"
        try:
            return cls(index), ""
        except Exception as error:  # NVMLError subclasses are generated at run time
            return None, f"NVML energy counter unavailable ({error})"


@dataclass(frozen=True)
class CounterWindow:
    """A counter polled over a window: its increase from its first update to its last one inside it."""

    seconds: float  # the whole window
    joules: float  # increase between the first and the last update seen
    span_s: float  # time between those two updates
    calls: int  # work calls between them (0 for an idle window)
    updates: int  # updates seen (2 are needed for a power)
    update_period_s: float | None  # median time between updates
    poll_s: float  # the longest time between two reads: how late an update can have been seen
    half_powers_w: tuple[float, float] | None  # power over the first and the second half of the updates

    @property
    def power_w(self) -> float | None:
        return self.joules / self.span_s if self.updates >= 2 and self.span_s > 0 else None


def read_window(
    meter: EnergyMeter, seconds: float, work: Callable[[], None] | None = None, poll_s: float = 0.002
) -> CounterWindow:
    """Read ``meter`` after each call of ``work`` (or each ``poll_s`` of sleep when idle) for ``seconds``,
    noting when its value changed and how many calls had run by then."""
    start = last_time = time.perf_counter()
    last_value, calls, gap = meter.read_joules(), 0, 0.0
    updates: list[tuple[float, float, int]] = []  # (time seen, value, calls so far)
    while True:
        if work is None:
            time.sleep(poll_s)
        else:
            work()
            calls += 1
        value, now = meter.read_joules(), time.perf_counter()
        gap, last_time = max(gap, now - last_time), now
        if value != last_value:
            updates.append((now, value, calls))
            last_value = value
        if now - start >= seconds:
            break
    gaps = [later[0] - earlier[0] for earlier, later in zip(updates, updates[1:], strict=False)]
    period = statistics.median(gaps) if gaps else None
    halves = None
    if len(updates) >= 5:
        middle = updates[len(updates) // 2]
        first, last = updates[0], updates[-1]
        halves = ((middle[1] - first[1]) / (middle[0] - first[0]), (last[1] - middle[1]) / (last[0] - middle[0]))
    first, last = (updates[0], updates[-1]) if updates else ((start, 0.0, 0), (start, 0.0, 0))
    return CounterWindow(round(now - start, 6), last[1] - first[1], last[0] - first[0], last[2] - first[2],
                         len(updates), period, gap, halves)  # fmt: skip


@dataclass(frozen=True)
class EnergyAboveIdle:
    """Energy per work call above idle power, from an idle window and a running one read just after it."""

    idle: CounterWindow
    active: CounterWindow
    steps_per_call: int

    @property
    def net_joules(self) -> float | None:
        """Energy of the active span above idle power over that span (None: too few updates)."""
        if self.idle.power_w is None or self.active.power_w is None or self.active.calls == 0:
            return None
        return self.active.joules - self.idle.power_w * self.active.span_s

    @property
    def noise_joules(self) -> float | None:
        """What the net energy can be off by: each update seen up to one read late (both windows), one call
        more or fewer counted at each end, and the idle power's drift between its window's two halves."""
        if self.net_joules is None:
            return None
        idle, active = self.idle, self.active
        late = 2 * active.poll_s * (active.power_w + idle.power_w)
        late += 2 * idle.poll_s * idle.power_w * active.span_s / idle.span_s
        drift = abs(idle.half_powers_w[0] - idle.half_powers_w[1]) * active.span_s if idle.half_powers_w else 0.0
        return late + drift + 2 * abs(self.net_joules) / active.calls

    @property
    def below_resolution(self) -> bool:
        """No update to count from, or a net energy that the noise could account for (zero or negative too)."""
        return self.net_joules is None or self.net_joules <= self.noise_joules

    @property
    def joules_per_step(self) -> float | None:
        """The net energy per step; None below the counter's resolution (never a negative energy)."""
        if self.below_resolution:
            return None
        return self.net_joules / (self.active.calls * self.steps_per_call)

    def record(self) -> dict:
        """The raw numbers, for the report beside the energy (or in its place)."""
        return {"idle_window": asdict(self.idle), "active_window": asdict(self.active),
                "steps_per_call": self.steps_per_call, "idle_power_w": self.idle.power_w,
                "active_power_w": self.active.power_w, "net_joules": self.net_joules,
                "noise_joules": self.noise_joules, "below_resolution": self.below_resolution}  # fmt: skip


def energy_above_idle(
    meter: EnergyMeter, work: Callable[[], None], steps_per_call: int, seconds: float = 1.0
) -> EnergyAboveIdle:
    """Idle power over ``seconds`` of sleep, then ``work`` (``steps_per_call`` steps, synchronised) called
    repeatedly for ``seconds``: the energy per step above idle, or why it is below the counter's resolution."""
    idle = read_window(meter, seconds)
    active = read_window(meter, seconds, work)
    return EnergyAboveIdle(idle, active, steps_per_call)
