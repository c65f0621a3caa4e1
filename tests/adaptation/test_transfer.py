"""SPEC §4.4 (ours): data-driven scaler initialisation, attention transfer and distillation, and the
recipe stages that run them (resumable after a kill, like the paper's stages)."""

import json
import math
import os
import shutil

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import gaincell
from gaincell import GainCellError, preset
from gaincell.adaptation.initialise import initialise_scalers, pretrained_statistics, sample_batches
from gaincell.adaptation.recipe import recipe_from_dict
from gaincell.adaptation.settings import InitialiseConfig, TransferConfig
from gaincell.adaptation.transfer import AttentionTransfer, make_teacher, transfer_stage
from gaincell.cli import main
from gaincell.hf.convert import attention_modules
from gaincell.hf.layer import gain_cell_layers
from gaincell.hf.taps import capture_attention_io, replay

pytestmark = pytest.mark.usefixtures("one_thread")

HARDWARE = preset("paper", window=16, subtile_rows=8, block_size=16)
QUICK = dict(warmup_steps=1, batch_size=4, eval_every=0, eval_batches=1, checkpoint_every=0, log_every=1,
             progress_bar=False, mixed_precision="no", weight_decay=0.0)  # fmt: skip


def tiny_llama(seed: int = 0, vocab: int = 300) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=vocab, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def blocks(n: int = 16, length: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 300, (n, length), generator=torch.Generator().manual_seed(seed))


def test_initialisation_puts_each_heads_q_k_v_statistics_where_it_promises():
    teacher, student = tiny_llama(), tiny_llama()
    config = InitialiseConfig(batch_size=4, batches=2, sigmas=2.0)
    initialise_scalers(student, teacher, blocks(), config, HARDWARE)
    stats = pretrained_statistics(teacher, sample_batches(blocks(), config))
    for cell, layer in zip(gain_cell_layers(student), stats, strict=True):
        for name, low, high in (("q", 0.0, 1.0), ("k", 0.0, 0.9), ("v", 0.0, 0.9)):
            mean, std = layer[name].mean_std()
            a, b = getattr(cell.scalers, f"a_{name}").double(), getattr(cell.scalers, f"b_{name}").double()
            torch.testing.assert_close(a * mean + b, torch.full_like(mean, (low + high) / 2))  # mid-range
            torch.testing.assert_close(a.abs() * std, torch.full_like(std, (high - low) / 4))  # ±2σ fill the range


def test_initialised_output_scalers_match_the_softmax_outputs_moments():
    teacher, student = tiny_llama(), tiny_llama()
    config = InitialiseConfig(batch_size=8, batches=1)
    initialise_scalers(student, teacher, blocks(), config, HARDWARE)
    batch = sample_batches(blocks(), config)[0]
    softmax = pretrained_statistics(teacher, [batch])
    for cell in gain_cell_layers(student):
        cell.observing = True
    with torch.no_grad(), capture_attention_io(teacher) as calls:
        teacher(input_ids=batch)
        for module, cell, call, layer in zip(
            attention_modules(student), gain_cell_layers(student), calls, softmax, strict=True
        ):
            replay(module, call)
            mean, std = layer["o"].mean_std()
            torch.testing.assert_close(cell.observed[0][3].double(), mean, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(cell.observed[1][3].double(), std, atol=1e-4, rtol=1e-3)


def test_attention_transfer_lowers_every_layers_mse(tmp_path):
    pretrained = tiny_llama()
    teacher = make_teacher(tiny_llama(), "window", HARDWARE)
    student = gaincell.convert(pretrained, HARDWARE)
    initialise_scalers(student, tiny_llama(), blocks(32), InitialiseConfig(batch_size=8, batches=1))
    probe = AttentionTransfer(student, teacher).eval()
    probe(blocks(8, seed=1))
    before = probe.layer_losses
    config = TransferConfig(max_steps=30, lr=3e-3, **QUICK)
    transfer_stage(student, teacher, blocks(32), None, config, HARDWARE, tmp_path)
    probe(blocks(8, seed=1))
    assert all(after < 0.8 * old for after, old in zip(probe.layer_losses, before, strict=True)), (
        before,
        probe.layer_losses,
    )
    assert all(p.requires_grad for p in student.parameters())  # the freeze is undone


def test_transfer_parameters_scalers_changes_nothing_else(tmp_path):
    teacher = make_teacher(tiny_llama(), "full", HARDWARE)
    student = gaincell.convert(tiny_llama(), HARDWARE)
    weights = {k: v.clone() for k, v in student.state_dict().items() if ".gaincell." not in k}
    transfer_stage(
        student, teacher, blocks(), None, TransferConfig(max_steps=3, parameters="scalers", **QUICK), HARDWARE, tmp_path
    )
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in weights.items())
    assert not torch.equal(gain_cell_layers(student)[0].scalers.a_q, torch.ones(4))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"stages": ["distill", "transfer"]},
            r"^stages must be each stage at most once, in the order .*, got \['distill', 'transfer'\]",
        ),
        ({"stages": ["calibrated"]}, "'calibrated' needs the 'linear' stage"),
        ({"stages": ["warp"]}, r"^stages must be a non-empty list of stage names from initialised, .*, got \['warp'\]"),
        ({"transfer": {"parameters": "everything"}}, "^transfer.parameters must be one of attention, scalers, got 'every"),
        ({"distill": {"temperature": 0}}, "^distill.temperature must be a finite number > 0, got 0"),
        ({"initialise": {"sigmas": -1}}, "^initialise.sigmas must be a finite number > 0, got -1"),
        (
            {"initialise": {"colour": 1}},
            r"^initialise: unknown key 'colour' \(expected one of: batch_size, batches, output, seed, sigmas\)",
        ),
        ({"gguf_file": ""}, "gguf_file must be a file name"),
    ],
)
def test_recipe_errors_name_the_field(changes, message):
    with pytest.raises(GainCellError, match=message):
        recipe_from_dict({"data": {"text": "x.txt"}, **changes})


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory, pydoc_text, tokenizer):
    root = tmp_path_factory.mktemp("transfer-recipe")
    text = pydoc_text[:30_000]
    gaincell.save(tiny_llama(), root / "model", tokenizer)
    (root / "corpus.txt").write_text(text)
    return root


def _recipe(root, output, kill_at: str | None = None) -> list[str]:
    stage = {"max_steps": 4, "checkpoint_every": 2, **{k: v for k, v in QUICK.items() if k != "checkpoint_every"}}
    recipe = {
        "model": str(root / "model"), "output_dir": str(output), "stages": ["initialised", "transfer", "distill"],
        "data": {"text": str(root / "corpus.txt"), "block_size": 24, "eval_blocks": 4},
        "hardware": {"preset": "paper", "window": 16, "subtile_rows": 8},
        "initialise": {"batch_size": 4, "batches": 1}, "transfer": stage, "distill": stage,
    }  # fmt: skip
    lines = [f"{k} = {json.dumps(v)}" for k, v in recipe.items() if not isinstance(v, dict)]
    for section, table in recipe.items():
        if isinstance(table, dict):
            lines += [f"[{section}]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    (root / "recipe.toml").write_text("\n".join(lines) + "\n")
    return ["adapt", str(root / "recipe.toml")]


class _Kill:
    """Stands in for a kill: interrupts training once, at ``step``, after the checkpoint before it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, step, model, metrics) -> None:
        if step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("stage", ["transfer", "distill"])
def test_the_new_stages_resume_after_a_kill_to_the_same_model(pretrained_dir, tmp_path, monkeypatch, stage):
    import gaincell.adaptation.transfer as transfer

    assert main(_recipe(pretrained_dir, tmp_path / "whole")) == 0
    original = transfer.train
    monkeypatch.setattr(
        transfer,
        "train",
        lambda *a, **k: original(*a, **{**k, "callbacks": [_Kill(3)]}) if _is(a, stage) else original(*a, **k),
    )
    assert main(_recipe(pretrained_dir, tmp_path / "killed")) == 130
    assert not (tmp_path / "killed" / stage / "model").exists()
    monkeypatch.setattr(transfer, "train", original)
    assert main([*_recipe(pretrained_dir, tmp_path / "killed"), "--resume"]) == 0
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary[stage]["steps"] == 4 and summary["transfer"]["tokens"] == 4 * 4 * 24
    whole, resumed = (gaincell.load(tmp_path / run / "distill" / "model").state_dict() for run in ("whole", "killed"))
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)


def _is(args, stage: str) -> bool:
    from gaincell.adaptation.transfer import AttentionTransfer, Distillation

    return isinstance(args[0], AttentionTransfer if stage == "transfer" else Distillation)


def test_a_stage_model_changed_after_it_was_saved_is_refused_on_resume(pretrained_dir, tmp_path, capsys):
    """Checkpoints were checksummed, stage models not: 1,000 zeroed bytes in the transfer model were resumed from."""
    run = tmp_path / "run"
    assert main(_recipe(pretrained_dir, run)) == 0
    card = (run / "transfer" / "model" / "README.md").read_text()
    assert "held-out attention error after transfer (relative MSE" in card and "perplexity after transfer" not in card
    shutil.rmtree(run / "distill")  # transfer done, distill not started
    weights = run / "transfer" / "model" / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        handle.write(bytes(1000))
    capsys.readouterr()
    assert main([*_recipe(pretrained_dir, run), "--resume"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"gaincell adapt: error: cannot resume {run}: the transfer stage's saved model {run / 'transfer' / 'model'}: "
        "model.safetensors does not match its sha256 (the file changed)"
    )
    assert not (run / "distill").exists()


def test_the_card_says_what_each_held_out_number_measured():
    from gaincell.adaptation.stages import held_out_results

    stages = {"transfer": {"eval_loss": 0.998}, "distill": {"eval_loss": 6.5}, "nonlinear": {"eval_loss": 800.0}}
    assert held_out_results(stages) == {
        "held-out attention error after transfer (relative MSE per layer, mean over layers)": 0.998,
        "held-out loss (nats/token) of the model after distill": 6.5,
        "held-out perplexity of the model after distill": round(math.exp(6.5), 3),
        "held-out loss (nats/token) of the model after nonlinear": 800.0,  # its exp overflows: the loss alone
    }


def test_a_second_adapt_on_a_folder_in_use_is_refused_and_writes_nothing(pretrained_dir, tmp_path, capsys):
    """Two runs on one fresh folder both found it empty; the second replaced the first's stage models."""
    from gaincell.lock import folder_lock

    run = tmp_path / "run"
    with folder_lock(run, "output_dir", "gaincell adapt"):  # the first run, still running
        assert main(_recipe(pretrained_dir, run)) == 2
        assert main([*_recipe(pretrained_dir, run), "--resume"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == (
        f"gaincell adapt: error: output_dir: {run} is in use by another gaincell adapt (process {os.getpid()}); "
        "wait for it to end or choose another folder"
    )
    assert [path.name for path in run.iterdir()] == [".gaincell.lock"]  # no run.json, no stage


def test_resume_refuses_a_training_text_that_changed_between_stages(pretrained_dir, tmp_path, capsys):
    """Issue 25 item 2: transfer done, the corpus edited, distill not started: the run would mix two datasets."""
    root = tmp_path / "root"
    shutil.copytree(pretrained_dir, root)
    run = tmp_path / "run"
    assert main(_recipe(root, run)) == 0
    shutil.rmtree(run / "distill")
    corpus = root / "corpus.txt"
    corpus.write_text(corpus.read_text().replace("the", "a"))
    capsys.readouterr()
    assert main([*_recipe(root, run), "--resume"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith(
            f"gaincell adapt: error: cannot resume {run}: the training data changed (sha256 of its token blocks was "
        )
    )
    assert not (run / "distill").exists()
