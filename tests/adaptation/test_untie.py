"""Untied embeddings in training (issue 24's lever, after RADLADS): a tied output head gets a copy of
its own, trains apart from the input embedding, is saved and reloaded untied and resumes exactly.
Off by default: a tied model trained with the defaults stays tied."""

import dataclasses

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import gaincell
from gaincell import GainCellError, preset
from gaincell.adaptation.settings import DistillConfig, TrainConfig, TransferConfig
from gaincell.adaptation.state import check_resumable
from gaincell.adaptation.train import train
from gaincell.adaptation.transfer import distill_stage, make_teacher
from gaincell.hf.embeddings import untie_embeddings
from gaincell.hf.pretrained import load, save
from gaincell.validation import as_json

pytestmark = pytest.mark.usefixtures("one_thread")

HARDWARE = preset("paper", window=16, subtile_rows=8, block_size=16)
QUICK = dict(warmup_steps=1, batch_size=4, eval_every=0, eval_batches=1, checkpoint_every=0, log_every=1,
             progress_bar=False, mixed_precision="no")  # fmt: skip


def tied_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=300, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def blocks(n: int = 16, length: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 300, (n, length), generator=torch.Generator().manual_seed(seed))


def test_untying_copies_the_matrix_and_leaves_the_outputs_alone():
    model = tied_llama()
    ids = blocks(2)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    assert untie_embeddings(model) is True
    head, embedding = model.lm_head.weight, model.model.embed_tokens.weight
    assert head is not embedding and head.data_ptr() != embedding.data_ptr()
    assert torch.equal(head, embedding) and head.requires_grad
    assert model.config.tie_word_embeddings is False
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=0)
    assert untie_embeddings(model) is False  # already apart: nothing to do
    untied = LlamaForCausalLM(LlamaConfig(**{**tied_llama().config.to_dict(), "tie_word_embeddings": False}))
    assert untie_embeddings(untied) is False


def test_the_setting_is_checked_and_refused_in_the_transfer_stage():
    assert TrainConfig().untie_embeddings is False and DistillConfig().untie_embeddings is False
    with pytest.raises(GainCellError, match="^untie_embeddings must be"):
        TrainConfig(untie_embeddings="yes")
    with pytest.raises(GainCellError, match="^untie_embeddings must be false in the transfer stage"):
        TransferConfig(untie_embeddings=True)


@pytest.mark.parametrize("untie", [False, True])
def test_distillation_trains_the_head_apart_only_when_asked(tmp_path, untie):
    teacher = make_teacher(tied_llama(), "window", HARDWARE)
    student = gaincell.convert(tied_llama(), HARDWARE)
    config = DistillConfig(max_steps=4, lr=3e-3, untie_embeddings=untie, **QUICK)
    result = distill_stage(student, teacher, blocks(16), blocks(4, seed=1), config, HARDWARE, tmp_path / "d")
    model = result.model
    original = tied_llama().model.embed_tokens.weight
    assert not torch.equal(model.model.embed_tokens.weight, original)  # both trained
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    assert tied is (not untie)
    if untie:
        assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
        assert not torch.equal(model.lm_head.weight, original)
    save(model, tmp_path / "saved")
    again = load(tmp_path / "saved")
    assert (again.lm_head.weight is again.model.embed_tokens.weight) is (not untie)
    ids = blocks(2, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def test_an_untied_run_resumes_to_the_same_weights(tmp_path):
    import shutil

    data = blocks(16)
    config = TrainConfig(max_steps=6, lr=3e-3, untie_embeddings=True, keep_checkpoints=2, keep_best_checkpoint=False,
                         **{**QUICK, "checkpoint_every": 3})  # fmt: skip
    straight = train(tied_llama(), data, None, config, tmp_path).model
    straight = {name: value.clone() for name, value in straight.state_dict().items()}
    shutil.rmtree(tmp_path / "checkpoints" / "step-00000006")  # as if killed after step 3's checkpoint
    resumed = train(tied_llama(), data, None, config, tmp_path, resume=True).model
    assert resumed.lm_head.weight is not resumed.model.embed_tokens.weight
    for name, value in straight.items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default(tmp_path):
    config = TrainConfig(max_steps=400)
    saved = {key: value for key, value in as_json(dataclasses.asdict(config)).items() if key != "untie_embeddings"}
    state = {"config": saved, "hardware": None, "num_processes": 1, "train_blocks": 8}
    check_resumable(state, tmp_path, config, None, 1, 8)  # it ran with the default: accepted
    with pytest.raises(GainCellError, match="untie_embeddings was False, now True"):
        check_resumable(state, tmp_path, TrainConfig(max_steps=400, untie_embeddings=True), None, 1, 8)
