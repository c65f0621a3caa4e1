"""Energy counters for the local measurement of :func:`gaincell.hardware.gpu.measure` (SPEC-hardware §6.2).

Both are cumulative counters read before and after a run: NVML's board energy on a CUDA device, RAPL's
package energy (Linux powercap) on the CPU. Opening one returns ``(None, reason)`` rather than raising,
so a machine without a meter still measures latency and the report says why energy is missing.
"""

from __future__ import annotations

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
