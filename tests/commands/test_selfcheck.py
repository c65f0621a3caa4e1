"""``gaincell selfcheck`` holds every fast form to the SPEC equations and says PASS or FAIL (exit 1)."""

import re

import pytest
import torch

import gaincell.commands.selfcheck as selfcheck
from gaincell.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["selfcheck", "--length", "40", "--window", "16", "--heads", "2", "--head-dim", "8", "--repeats", "1"]


def test_every_form_passes_and_the_tolerance_is_printed(capsys):
    assert main(SMALL) == 0
    out = capsys.readouterr().out
    assert re.search(r"selfcheck: PASS: ([7-9]|1[0-9]) forms agree with the SPEC equations", out), out  # 7 without triton
    assert "tolerance: ADC grid: ≤ 0.1 % of outputs ≥ ½ step apart" in out
    assert "tolerance: no ADC grid: max |diff| ≤ 1e-05 × max |reference|" in out
    for preset in ("linear", "paper", "ideal"):
        assert re.search(rf"{preset} .*parallel \(torch\) .* PASS", out) and re.search(rf"{preset} .*step .* PASS", out)
    if not torch.cuda.is_available():  # the dispatcher says why the fused kernel cannot run here
        assert "parallel (triton) │" in out and "unavailable: kernel='triton' cannot run" in out


def test_bf16_inputs_pass_against_the_equations_on_the_same_values(capsys):
    assert main([*SMALL, "--dtype", "bf16"]) == 0
    assert "bfloat16 inputs" in capsys.readouterr().out


def test_an_op_one_step_off_fails_with_exit_1(monkeypatch, capsys):
    real = selfcheck.gain_cell_attention

    def off_by_a_step(q, k, v, scalers, config, **kwargs):
        out = real(q, k, v, scalers, config, **kwargs)
        if config.attention == "softmax" or config.periphery.adc.levels is None:
            return out
        return out + config.periphery.adc.step * (torch.arange(out.numel()).view(out.shape) % 100 == 0)  # 1 %

    monkeypatch.setattr(selfcheck, "gain_cell_attention", off_by_a_step)
    assert main(SMALL) == 1
    out = capsys.readouterr().out
    assert "selfcheck: FAIL: linear/parallel (torch), paper/parallel (torch) outside the tolerance" in out


def test_timings_exclude_the_warm_up_call():
    calls = []
    assert selfcheck.milliseconds(lambda: calls.append(1), torch.device("cpu"), 3) >= 0
    assert len(calls) == 4  # one untimed, three timed


def test_cuda_without_cuda_is_one_line_naming_device(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*SMALL, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert (
        err.strip()
        == "gaincell selfcheck: error: --device cuda: this machine has no CUDA GPU that torch can use; use --device cpu"
    )
