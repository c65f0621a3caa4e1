"""The step-by-step gain-cell memory returns what the parallel op returns (SPEC §3.6)."""

import dataclasses

import pytest
import torch

from gaincell import CellGains, GainCellError, GainCellMemory, Scalers, gain_cell_attention, preset
from gaincell.chip.config import PRESETS


def _sequence(length, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.rand(2, 3, length, 8, generator=generator, dtype=dtype)
    k = torch.rand(2, 3, length, 8, generator=generator, dtype=dtype) - 0.5
    v = torch.rand(2, 3, length, 8, generator=generator, dtype=dtype) - 0.5
    return q, k, v


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("length", [20, 32, 150])  # T < M, T = M, T > M (four wrap-arounds)
@pytest.mark.parametrize("prompt", [0, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_steps_equal_parallel(name, length, prompt, dtype):
    config = preset(name, window=32, subtile_rows=16, block_size=16)
    q, k, v = _sequence(length, dtype)
    scalers = Scalers(3).to(dtype)
    with torch.no_grad():
        parallel = gain_cell_attention(q, k, v, scalers, config)
    memory = GainCellMemory(config, scalers, 2, 3, 8, dtype=dtype)
    outputs = [memory.prefill(q[:, :, :prompt], k[:, :, :prompt], v[:, :, :prompt])] if prompt else []
    for t in range(prompt, length):
        outputs.append(memory.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1]))
    stepped = torch.cat(outputs, dim=2)
    assert ((stepped - parallel).abs().max() / parallel.abs().max()).item() <= 1e-5


def test_steps_equal_parallel_with_variability_and_uneven_subtiles():
    config = preset("paper", window=40, subtile_rows=16, block_size=24)
    config = config.replace(noise=dataclasses.replace(config.noise, variability=0.1))
    gains = CellGains.sample(config, 3, 8)
    q, k, v = _sequence(101, torch.float64)
    scalers = Scalers(3).double()
    parallel = gain_cell_attention(q, k, v, scalers, config, gains=gains)
    memory = GainCellMemory(config, scalers, 2, 3, 8, gains=gains, dtype=torch.float64)
    stepped = torch.cat([memory.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1]) for t in range(101)], 2)
    torch.testing.assert_close(stepped, parallel, rtol=1e-10, atol=1e-12)


def test_slots_hold_the_last_window_in_circular_order():
    config = preset("paper", window=8, subtile_rows=4, block_size=4)
    q, k, v = _sequence(13, torch.float32)
    memory = GainCellMemory(config, Scalers(3), 2, 3, 8)
    for t in range(13):
        memory.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1])
    assert memory.positions.tolist() == [8, 9, 10, 11, 12, 5, 6, 7]
    memory.reset()
    assert memory.length == 0 and (memory.positions == -1).all()


def test_bad_inputs_are_named():
    memory = GainCellMemory(preset("paper", window=8, subtile_rows=4), Scalers(3), 2, 3, 8)
    with pytest.raises(GainCellError, match="one token"):
        memory.step(*(torch.rand(2, 3, 2, 8) for _ in range(3)))
    with pytest.raises(GainCellError, match="heads=3"):
        memory.step(*(torch.rand(2, 4, 1, 8) for _ in range(3)))
    with pytest.raises(GainCellError, match="batch"):
        GainCellMemory(preset("paper"), Scalers(3), 0, 3, 8)


def test_stored_side_is_rebuilt_only_when_the_decay_anchor_moves(monkeypatch):
    """Generation cost per token is flat: a step recomputes one slot, the whole stored side once per block."""
    config = preset("paper", window=32, subtile_rows=16, block_size=16)
    q, k, v = _sequence(100, torch.float64)
    memory = GainCellMemory(config, Scalers(3).double(), 2, 3, 8, dtype=torch.float64)
    builds = []
    build = GainCellMemory._build_stored
    monkeypatch.setattr(GainCellMemory, "_build_stored", lambda self, anchor: builds.append(anchor) or build(self, anchor))
    stepped = torch.cat([memory.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1]) for t in range(100)], 2)
    assert builds == list(range(0, 100, 16))
    parallel = gain_cell_attention(q, k, v, Scalers(3).double(), config)
    torch.testing.assert_close(stepped, parallel, rtol=1e-10, atol=1e-12)


def test_select_reorders_the_batch_like_beam_search():
    config = preset("paper", window=16, subtile_rows=8, block_size=8)
    q, k, v = _sequence(40, torch.float64)
    scalers = Scalers(3).double()
    memory = GainCellMemory(config, scalers, 2, 3, 8, dtype=torch.float64)
    memory.prefill(q[:, :, :20], k[:, :, :20], v[:, :, :20])
    for t in range(20, 30):
        memory.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1])
    memory.select(torch.tensor([1, 0]))
    swapped = [x.flip(0) for x in (q, k, v)]
    outputs = [memory.step(*(x[:, :, t : t + 1] for x in swapped)) for t in range(30, 40)]
    parallel = gain_cell_attention(*swapped, scalers, config)[:, :, 30:]
    torch.testing.assert_close(torch.cat(outputs, 2), parallel, rtol=1e-10, atol=1e-12)


def test_step_output_is_an_ordinary_tensor():
    """The step runs in inference mode inside; what it returns can still enter an autograd graph."""
    config = preset("paper", window=8, subtile_rows=4, block_size=4)
    q, k, v = _sequence(12, torch.float32)
    memory = GainCellMemory(config, Scalers(3), 2, 3, 8)
    weight = torch.ones(8, requires_grad=True)
    total = sum((memory.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1]) * weight).sum() for t in range(12))
    total.backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()


def test_memory_made_in_inference_mode_resets_outside_it():
    config = preset("paper", window=8, subtile_rows=4, block_size=4)
    q, k, v = _sequence(3, torch.float32)
    with torch.inference_mode():
        memory = GainCellMemory(config, Scalers(3), 2, 3, 8)
        first = memory.step(q[:, :, :1], k[:, :, :1], v[:, :, :1])
    memory.reset()
    torch.testing.assert_close(memory.step(q[:, :, :1], k[:, :, :1], v[:, :, :1]), first, rtol=0, atol=0)


def test_scaler_changed_in_place_between_steps_is_used():
    """The stacked scalers are kept between steps; an in-place change (an optimiser step, a
    ``no_grad`` update) must still reach the next step. Only the query scaler changes, so the last
    output equals the parallel op's with the new scalers."""
    config = preset("paper", window=16, subtile_rows=8, block_size=8)
    q, k, v = _sequence(10, torch.float32)
    scalers = Scalers(3)
    memory = GainCellMemory(config, scalers, 2, 3, 8)
    for t in range(9):
        memory.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1])
    with torch.no_grad():
        scalers.a_q.mul_(0.5)
        scalers.b_q.add_(0.1)
    last = memory.step(q[:, :, 9:], k[:, :, 9:], v[:, :, 9:])
    with torch.no_grad():
        parallel = gain_cell_attention(q, k, v, scalers, config)
    torch.testing.assert_close(last, parallel[:, :, 9:], rtol=1e-5, atol=1e-6)


def test_steps_equal_parallel_on_the_ends_grid():
    """The named ``ends`` grid with a DAC range not starting at 0 (levels low + k·step) takes the
    step's per-quantiser path, not the stacked one."""
    config = preset("paper", window=32, subtile_rows=16, block_size=16)
    periphery = config.periphery
    ends = {name: dataclasses.replace(getattr(periphery, name), grid="ends") for name in ("q", "kv", "adc")}
    ends["q"] = dataclasses.replace(ends["q"], low=0.05)
    config = config.replace(periphery=dataclasses.replace(periphery, **ends))
    q, k, v = _sequence(70, torch.float64)
    scalers = Scalers(3).double()
    with torch.no_grad():
        parallel = gain_cell_attention(q, k, v, scalers, config)
    memory = GainCellMemory(config, scalers, 2, 3, 8, dtype=torch.float64)
    assert memory._grid(torch.float64) is None
    stepped = torch.cat([memory.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1]) for t in range(70)], 2)
    torch.testing.assert_close(stepped, parallel, rtol=1e-10, atol=1e-12)


def test_a_first_fused_step_that_fails_turns_the_memory_to_the_torch_step_with_one_warning(monkeypatch):
    """A Triton build the device refuses must not fail a generation: the memory warns once, steps with the
    torch form from the state before the failed call, and gives the torch form's outputs."""
    import gaincell.op.memory as memory_module

    config = preset("paper", window=16, subtile_rows=8, block_size=8)
    q, k, v = _sequence(24, torch.float32)
    scalers = Scalers(3)
    reference = GainCellMemory(config, scalers, 2, 3, 8, kernel="torch")
    memory = GainCellMemory(config, scalers, 2, 3, 8, kernel="torch")

    def refuse(*args, **kwargs):
        raise RuntimeError("PTX .version 8.7 does not support .target sm_120")

    monkeypatch.setattr(memory_module, "fused_step_front_end", refuse)
    with torch.no_grad():
        expected = [reference.prefill(q[:, :, :5], k[:, :, :5], v[:, :, :5])]
        got = [memory.prefill(q[:, :, :5], k[:, :, :5], v[:, :, :5])]
        memory.form = "triton"  # its steps as the dispatcher picks them on CUDA (the prefill ran the torch form)
        with pytest.warns(RuntimeWarning, match="fused generation step failed on its first use .*RuntimeError: PTX"):
            got.append(memory.step(q[:, :, 5:6], k[:, :, 5:6], v[:, :, 5:6]))
        expected.append(reference.step(q[:, :, 5:6], k[:, :, 5:6], v[:, :, 5:6]))
        for t in range(6, 24):  # no more warnings: the memory is the torch form's now
            got.append(memory.step(*(x[:, :, t : t + 1] for x in (q, k, v))))
            expected.append(reference.step(*(x[:, :, t : t + 1] for x in (q, k, v))))
    assert memory.form == "torch" and memory.length == reference.length == 24
    assert torch.equal(memory.positions, reference.positions)
    assert torch.equal(torch.cat(got, 2), torch.cat(expected, 2))
