"""The op's hot path reads no value back from its tensors: on a GPU each such read (``.item()``,
``.tolist()``, ``bool(t)``) waits for every queued kernel, once per block of every layer.

The block schedule (bands, their edges, folds and occupancy) is made once per (plan, length, device)
and kept (:func:`gaincell.op.kernels.banded.blocks_on`); after that first call a forward and a
backward must not convert any tensor to a Python value. Checked on the CPU by making every such
conversion raise."""

import pytest
import torch

from gaincell import Scalers, gain_cell_attention, preset
from gaincell.op.kernels.banded import blocks_on

READS = ("item", "tolist", "__bool__", "__int__", "__float__")


def _forbid_reads(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor value was read back to the host in the op's hot path")

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, refuse)


@pytest.mark.parametrize(
    ("name", "length", "geometry"),
    [("paper", 150, (64, 16, 32)), ("linear", 40, (64, 16, 16)), ("paper", 131, (40, 16, 24))],
)
def test_a_warm_forward_and_backward_read_no_value_back(monkeypatch, name, length, geometry):
    window, rows, block = geometry
    config = preset(name, window=window, subtile_rows=rows, block_size=block).replace(leakage=1e-3)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.rand(1, 2, length, 8, generator=generator).requires_grad_() for _ in range(3))
    scalers = Scalers(2)
    gain_cell_attention(q, k, v, scalers, config).sum().backward()  # the first call makes the schedule
    expected = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    _forbid_reads(monkeypatch)
    out = gain_cell_attention(q, k, v, scalers, config)
    out.sum().backward()
    monkeypatch.undo()
    assert all(torch.equal(x.grad, e) for x, e in zip((q, k, v), expected, strict=True))


def test_the_refusal_catches_a_read():
    """The check itself: a read does raise while it is on."""
    with pytest.MonkeyPatch.context() as patch:
        _forbid_reads(patch)
        with pytest.raises(AssertionError, match="read back"):
            bool(torch.ones(2).all())
    assert bool(torch.ones(1))


def test_the_schedule_is_made_once_per_shape():
    config = preset("paper", window=32, subtile_rows=16, block_size=16)
    plan_args = (config, False)
    from gaincell.op.kernels.plan import make_plan

    plan = make_plan(*plan_args)
    first = blocks_on(plan, 100, torch.device("cpu"))
    assert blocks_on(plan, 100, torch.device("cpu")) is first
    assert blocks_on(plan, 101, torch.device("cpu")) is not first
