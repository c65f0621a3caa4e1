"""``position_offset``: training blocks at shifted positions, so an adapted RoPE model sees every position it
is scored at (the gain-cell op acts on q and k after RoPE and is not rotation invariant)."""

import pytest
import torch
from test_transfer import HARDWARE, QUICK, blocks, tiny_llama

from gaincell import GainCellError
from gaincell.adaptation.batches import offset_positions
from gaincell.adaptation.settings import DistillConfig, TransferConfig
from gaincell.adaptation.transfer import distill_stage, make_teacher, transfer_stage

pytestmark = pytest.mark.usefixtures("one_thread")


def test_offsets_are_drawn_per_micro_batch_within_range_and_again_the_same():
    shape = torch.Size((3, 24))
    drawn = [offset_positions(40, 0, index, 0, shape) for index in range(50)]
    for positions in drawn:
        assert positions.shape == shape and (positions == positions[0]).all()  # one offset per micro-batch
        assert torch.equal(positions[0], torch.arange(24) + positions[0, 0])  # the block's own order, shifted
    starts = {int(p[0, 0]) for p in drawn}
    assert min(starts) >= 0 and max(starts) <= 40 and len(starts) > 10
    again = [offset_positions(40, 0, index, 0, shape) for index in range(50)]
    assert all(torch.equal(a, b) for a, b in zip(drawn, again, strict=True))  # a resumed run draws the same
    other = [int(offset_positions(40, 0, index, 1, shape)[0, 0]) for index in range(50)]
    assert other != [int(p[0, 0]) for p in drawn]  # another process draws its own
    assert offset_positions(0, 0, 3, 0, shape) is None


def positions_seen(model) -> list[torch.Tensor]:
    seen = []
    model.register_forward_pre_hook(lambda _m, _a, kwargs: seen.append(kwargs.get("position_ids")), with_kwargs=True)
    return seen


@pytest.mark.parametrize("stage", ["transfer", "distill"])
def test_student_and_teacher_see_the_same_shifted_positions(stage, tmp_path):
    student, teacher = tiny_llama(), make_teacher(tiny_llama(), "full", HARDWARE)
    seen_student, seen_teacher = positions_seen(student), positions_seen(teacher.base_model)
    settings = {**QUICK, "max_steps": 3, "position_offset": 40, "eval_batches": None}
    if stage == "transfer":
        transfer_stage(student, teacher, blocks(), None, TransferConfig(**settings), HARDWARE, tmp_path)
        assert seen_student == []  # the student's layers are replayed on the teacher's recorded inputs
    else:
        distill_stage(student, teacher, blocks(), None, DistillConfig(**settings), HARDWARE, tmp_path)
        assert len(seen_student) == 3 and all(torch.equal(s, t) for s, t in zip(seen_student, seen_teacher, strict=True))
    assert len(seen_teacher) == 3
    starts = [int(p[0, 0]) for p in seen_teacher]
    assert all(0 <= start <= 40 for start in starts) and any(starts)
    assert starts == [int(offset_positions(40, 0, step, 0, torch.Size((4, 24)))[0, 0]) for step in range(3)]


def test_an_offset_past_the_model_s_positions_is_one_line(tmp_path):
    student, teacher = tiny_llama(), make_teacher(tiny_llama(), "full", HARDWARE)
    config = DistillConfig(**{**QUICK, "max_steps": 1, "position_offset": 41})  # 41 + 24 > 64 positions
    with pytest.raises(GainCellError, match=r"position_offset \+ block size: context of 65 tokens is longer than"):
        distill_stage(student, teacher, blocks(), None, config, HARDWARE, tmp_path)
    with pytest.raises(GainCellError, match="position_offset must be an integer >= 0, got -1"):
        DistillConfig(position_offset=-1)
