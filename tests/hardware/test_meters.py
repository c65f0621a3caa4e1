"""The energy of ``gaincell hw --measure`` read from NVML's counter (hardware/meters.py, hardware/gpu.py), on the
CPU with a fake NVML: the three pynvml calls over a simulated board whose counter, like NVML's, moves only in
updates. The first H200 run read such a counter before and after a 65 ms run and reported −0.08 J a step."""

from __future__ import annotations

import math
import sys
import time
import types

import pytest

from gaincell.hardware import gpu
from gaincell.hardware.gpu import DecodeWorkload, measure
from gaincell.hardware.meters import NvmlMeter

IDLE_W = 126.0  # the H200's idle power in that run


class FakeBoard:
    """``IDLE_W`` at all times plus ``joules_per_step`` for each decode step; the counter (integer mJ, as
    ``nvmlDeviceGetTotalEnergyConsumption`` returns) shows the energy as of its last update, every ``period_s``."""

    def __init__(self, joules_per_step: float, period_s: float) -> None:
        self.joules_per_step, self.period_s = joules_per_step, period_s
        self.start, self.steps = time.perf_counter(), []

    def module(self) -> types.ModuleType:
        fake = types.ModuleType("pynvml")
        fake.nvmlInit = lambda: None
        fake.nvmlDeviceGetHandleByIndex = lambda index: index
        fake.nvmlDeviceGetTotalEnergyConsumption = self.counter_mj
        return fake

    def counter_mj(self, handle) -> int:
        update = math.floor((time.perf_counter() - self.start) / self.period_s) * self.period_s
        steps = sum(1 for moment in self.steps if moment <= update)
        return int(1000 * (IDLE_W * update + self.joules_per_step * steps))

    def step(self, t: int) -> None:
        time.sleep(2e-4)  # a decode step's time on the device
        self.steps.append(time.perf_counter() - self.start)


def _measure(monkeypatch, board: FakeBoard, **options):
    monkeypatch.setitem(sys.modules, "pynvml", board.module())
    monkeypatch.setattr(gpu, "_decode_step", lambda workload, device: board.step)
    meter, reason = NvmlMeter.open(0)
    assert meter is not None, reason
    workload = DecodeWorkload(batch=2, heads=1, head_dim=8, window=16, kernel="fused")
    return measure(workload, steps=20, repetitions=2, warmup=1, meter=meter, threads=1, **options)


def test_energy_per_step_above_idle_from_a_counter_that_moves_in_updates(monkeypatch):
    result = _measure(monkeypatch, FakeBoard(joules_per_step=0.05, period_s=0.02), energy_seconds=0.5)
    assert result.idle_power == pytest.approx(IDLE_W, rel=0.02)
    assert result.energy_step == pytest.approx(0.05, rel=0.1)
    assert result.energy_method == "NVML total energy counter minus idle power"
    window = result.energy_window
    assert not window["below_resolution"] and window["active_window"]["updates"] >= 10
    assert window["active_window"]["seconds"] >= 0.5 and window["idle_window"]["seconds"] >= 0.5


def test_no_energy_above_idle_is_below_resolution_never_negative(monkeypatch):
    result = _measure(monkeypatch, FakeBoard(joules_per_step=0.0, period_s=0.02), energy_seconds=0.3)
    assert result.energy_step is None and result.energy_per_sequence_token is None
    window = result.energy_window
    assert window["below_resolution"] and abs(window["net_joules"]) <= window["noise_joules"]
    assert window["idle_power_w"] == pytest.approx(IDLE_W, rel=0.05)  # the raw numbers stay in the report
    assert "below the counter's resolution" in result.energy_method


def test_a_counter_slower_than_the_window_gives_no_energy_rather_than_a_negative_one(monkeypatch):
    """The H200 run's case: no update inside the window. Read once before and once after, the counter's
    unchanged value minus idle power × time was negative."""
    result = _measure(monkeypatch, FakeBoard(joules_per_step=0.05, period_s=5.0), energy_seconds=0.1)
    assert result.energy_step is None and result.idle_power is None
    assert result.energy_window["below_resolution"] and result.energy_window["active_window"]["updates"] <= 1
    assert result.latency_step > 0


def test_the_energy_window_must_be_positive(monkeypatch):
    from gaincell.errors import GainCellError

    with pytest.raises(GainCellError, match="--measure-energy-s"):
        _measure(monkeypatch, FakeBoard(joules_per_step=0.05, period_s=0.02), energy_seconds=0)
