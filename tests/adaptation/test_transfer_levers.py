"""Levers of the attention transfer (issue 24, ours): the per-layer loss normalised by the teacher's
variance, and the per-channel digital output scaler (``periphery.output_scaler = "channel"``).
The paper's defaults must give exactly what they gave before."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import gaincell
from gaincell import GainCellError, preset
from gaincell.adaptation.settings import TransferConfig
from gaincell.adaptation.transfer import make_teacher, transfer_loss, transfer_stage
from gaincell.chip.config import GainCellConfig
from gaincell.hf.convert import attention_modules
from gaincell.hf.layer import gain_cell_layers
from gaincell.hf.pretrained import load, save
from gaincell.hf.taps import capture_attention_io, replay

pytestmark = pytest.mark.usefixtures("one_thread")

HARDWARE = preset("paper", window=16, subtile_rows=8, block_size=16)
CHANNEL = HARDWARE.replace(periphery=HARDWARE.periphery.__class__(output_scaler="channel"))
QUICK = dict(warmup_steps=1, batch_size=4, eval_every=0, eval_batches=1, checkpoint_every=0, log_every=1,
             progress_bar=False, mixed_precision="no", weight_decay=0.0)  # fmt: skip


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=300, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def blocks(n: int = 16, length: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 300, (n, length), generator=torch.Generator().manual_seed(seed))


def test_transfer_losses_follow_their_definitions():
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(2, 5, 3, generator=generator) + torch.tensor([4.0, -2.0, 1.0])  # a large mean per channel
    output = target + 0.1 * torch.randn(2, 5, 3, generator=generator)
    squared_error = sum(float((o - t) ** 2) for o, t in zip(output.flatten(), target.flatten(), strict=True)) / 30
    mean_square = sum(float(t) ** 2 for t in target.flatten()) / 30
    rows = target.reshape(10, 3)
    variances = [sum((float(x) - float(rows[:, c].mean())) ** 2 for x in rows[:, c]) / 10 for c in range(3)]
    assert float(transfer_loss(output, target)) == pytest.approx(squared_error / mean_square, rel=1e-5)
    assert float(transfer_loss(output, target, "variance")) == pytest.approx(squared_error / (sum(variances) / 3), rel=1e-5)


def test_transfer_loss_choice_is_checked():
    with pytest.raises(GainCellError, match="^loss must be one of relative, variance, got 'l1'"):
        TransferConfig(loss="l1")
    assert TransferConfig().loss == "relative"


def test_output_scaler_choice_is_checked_and_the_paper_keeps_one_pair_per_head():
    assert preset("paper").periphery.output_scaler == "head"
    with pytest.raises(GainCellError, match="^periphery.output_scaler must be one of head, channel, got 'row'"):
        preset("paper", periphery=HARDWARE.periphery.__class__(output_scaler="row"))
    model = gaincell.convert(tiny_llama(), HARDWARE)
    assert not any("channel_" in key for key in model.state_dict())  # the default model's tensors are unchanged


def test_channel_scaler_starts_as_the_identity_and_acts_per_value_column():
    ids = blocks(2)
    head = gaincell.convert(tiny_llama(), HARDWARE)
    channel = gaincell.convert(tiny_llama(), CHANNEL)
    with torch.no_grad():
        torch.testing.assert_close(channel(input_ids=ids).logits, head(input_ids=ids).logits, rtol=0, atol=0)
    teacher = tiny_llama()
    with torch.no_grad(), capture_attention_io(teacher) as calls:
        teacher(input_ids=ids)
        cell = gain_cell_layers(channel)[0]
        seen = {}
        hook = cell.register_forward_hook(lambda m, a, o: seen.setdefault("before", o.clone()))
        replay(attention_modules(channel)[0], calls[0])
        hook.remove()
        cell.channel_gain[1, 3] = 2.0
        cell.channel_offset[2, 0] = 0.5
        hook = cell.register_forward_hook(lambda m, a, o: seen.setdefault("after", o.clone()))
        replay(attention_modules(channel)[0], calls[0])
        hook.remove()
    expected = seen["before"].clone()  # (B, H, T, D): head 1's column 3 doubled, head 2's column 0 shifted
    expected[:, 1, :, 3] *= 2.0
    expected[:, 2, :, 0] += 0.5
    torch.testing.assert_close(seen["after"], expected)


def test_channel_scaler_is_saved_and_loaded_with_the_model(tmp_path):
    model = gaincell.convert(tiny_llama(), CHANNEL)
    with torch.no_grad():
        for cell in gain_cell_layers(model):
            cell.channel_offset.normal_()
    save(model, tmp_path / "m")
    again = load(tmp_path / "m")
    assert GainCellConfig.from_dict(again.config.gaincell).periphery.output_scaler == "channel"
    for mine, theirs in zip(gain_cell_layers(model), gain_cell_layers(again), strict=True):
        assert torch.equal(mine.channel_offset, theirs.channel_offset)
    gaincell.convert(again, HARDWARE)  # back to the paper's scaler: the extra tensors go
    assert not any("channel_" in key for key in again.state_dict())


def test_transfer_trains_the_channel_scaler_and_the_variance_loss_falls(tmp_path):
    teacher = make_teacher(tiny_llama(), "window", CHANNEL)
    student = gaincell.convert(tiny_llama(), CHANNEL)
    config = TransferConfig(max_steps=12, lr=3e-3, loss="variance", **QUICK)
    result = transfer_stage(student, teacher, blocks(32), blocks(8, seed=1), config, CHANNEL, tmp_path)
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    assert last < first, (first, last)
    assert not torch.equal(gain_cell_layers(student)[0].channel_offset, torch.zeros(4, 8))
