"""The adaptation recipe (SPEC §4): linear stage targets, calibration loop, recipe file and CLI."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

import gaincell
from gaincell import GainCellError, preset
from gaincell.adaptation.calibration import calibrate
from gaincell.adaptation.recipe import read_recipe, recipe_from_dict
from gaincell.adaptation.settings import CalibrationConfig, TrainConfig
from gaincell.adaptation.stages import linear_config, linear_stage
from gaincell.cli import main
from gaincell.hf.convert import model_config
from gaincell.hf.layer import gain_cell_layers

pytestmark = pytest.mark.usefixtures("one_thread")

HARDWARE = preset("paper", window=16, subtile_rows=8, block_size=16)


def _blocks(n=24, seed=0):
    return torch.randint(1, 300, (n, 32), generator=torch.Generator().manual_seed(seed))


def _quick(**changes):
    base = dict(max_steps=6, warmup_steps=1, batch_size=4, eval_every=0, eval_batches=1, checkpoint_every=0,
                log_every=1, progress_bar=False, mixed_precision="no")  # fmt: skip
    return TrainConfig(**{**base, **changes})


def test_linear_config_keeps_the_chip_but_uses_linear_cells():
    linear = linear_config(HARDWARE)
    assert linear.cell.kind == "linear" and linear.periphery == HARDWARE.periphery
    assert (linear.window, linear.leakage) == (HARDWARE.window, HARDWARE.leakage)


def test_damping_decays_linearly_from_one_to_a_tenth_over_fifty_iterations():
    config = CalibrationConfig()
    assert config.damping(0) == 1.0 and config.damping(25) == pytest.approx(0.55)
    assert config.damping(50) == pytest.approx(0.1) and config.damping(99) == pytest.approx(0.1)
    assert (config.max_iterations, config.tolerance) == (100, 1e-4)


def test_linear_stage_records_targets_then_calibration_meets_them(tmp_path, capsys, tiny_gpt2):
    model = tiny_gpt2()
    blocks = _blocks()
    linear_stage(model, blocks, blocks[:4], _quick(grad_accum=2), HARDWARE, tmp_path / "linear")
    block = blocks.shape[1]
    assert f"linear: {4 * 2 * block:,} tokens per optimiser step (batch_size 4 per process" in capsys.readouterr().out
    cells = gain_cell_layers(model)
    assert model_config(model).cell.kind == "linear"
    assert all(int(cell.target_count) == 6 * 2 for cell in cells)  # one EMA update per training forward
    assert not any(cell.recording for cell in cells)
    result = calibrate(model, blocks[:8], CalibrationConfig(max_iterations=100), HARDWARE)
    assert model_config(model) == HARDWARE
    assert result.errors[-1] < result.errors[0] / 10
    assert result.converged == (result.errors[-1] < 1e-4)
    assert result.iterations <= 100 and torch.isfinite(torch.tensor(result.loss))
    assert len(result.dampings) == len(result.errors) - result.converged  # one update after each unmet measurement
    assert result.dampings[0] == 1.0 and all(0.1 <= d <= 1.0 for d in result.dampings)


def test_calibration_moves_the_output_scaler_toward_the_targets(tiny_gpt2):
    model = gaincell.convert(tiny_gpt2(), HARDWARE)
    for cell in gain_cell_layers(model):  # targets the nonlinear model does not meet on its own
        cell.target_count.fill_(1)
        cell.target_mean.zero_()
        cell.target_std.fill_(0.5)
    result = calibrate(model, _blocks(8), CalibrationConfig(max_iterations=60))
    assert result.errors[-1] < 0.05 * result.errors[0]


def test_calibration_measures_in_the_mode_targets_were_recorded_in(tiny_gpt2):
    """Targets come from training forwards (dropout on), so calibration's statistics do too (SPEC §4.2),
    each iteration with the same dropout draw; only the final loss, which picks a process, is in eval mode."""
    model = gaincell.convert(tiny_gpt2(), HARDWARE)
    for cell in gain_cell_layers(model):
        cell.target_count.fill_(1)
        cell.target_std.fill_(0.5)
    modes, masks = [], []
    dropout = model.transformer.drop  # GPT-2's embedding dropout, p = 0.1

    def record(module, inputs, output):
        modes.append(module.training)
        masks.append(output == 0)

    dropout.register_forward_hook(record)
    model.eval()
    result = calibrate(model, _blocks(4), CalibrationConfig(max_iterations=5))
    assert modes == [True] * result.iterations + [False]
    assert all(torch.equal(mask, masks[0]) for mask in masks[1:-1]) and masks[0].any()
    assert not model.training  # the caller's mode is restored


def _calibrate_with_torchrun(tmp_path, *extra):
    worker = Path(__file__).resolve().parents[1] / "workers" / "calibrate_worker.py"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [*torchrun, str(worker), str(tmp_path), *extra]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"result-rank{rank}.pt") for rank in range(2)]
    assert [result["world"] for result in ranks] == [2, 2]
    return ranks


def test_calibration_with_two_processes_keeps_the_scalers_of_the_lowest_loss(tmp_path):
    """torchrun with two gloo processes, one batch each: both end with the best rank's own scalers,
    and both report the best rank's loss and errors."""
    ranks = _calibrate_with_torchrun(tmp_path)
    losses = [result["alone_loss"] for result in ranks]  # each rank's loss on its own batch
    best = min(range(2), key=losses.__getitem__)
    assert best == 1 and losses[1] < losses[0] - 1  # by construction (see the worker): not rank 0 by default
    for result in ranks:
        assert result["losses"] == losses and result["chosen_rank"] == best
        assert result["loss"] == losses[best] and result["errors"] == ranks[best]["alone_errors"]
    alone = [result["alone_scalers"] for result in ranks]
    names = sorted(alone[best])
    assert len(names) == 2 * 8 and any(not torch.equal(alone[0][name], alone[1][name]) for name in names)
    for result in ranks:
        assert sorted(result["scalers"]) == names
        assert all(torch.equal(result["scalers"][name], alone[best][name]) for name in names)


def test_a_nan_loss_never_wins_the_multi_process_choice(tmp_path):
    ranks = _calibrate_with_torchrun(tmp_path, "nan-on-last")
    assert math.isnan(ranks[1]["alone_loss"]) and math.isfinite(ranks[0]["alone_loss"])
    for result in ranks:
        assert result["chosen_rank"] == 0 and result["loss"] == ranks[0]["alone_loss"]
        assert all(torch.isfinite(value).all() for value in result["scalers"].values())


def test_a_non_finite_calibration_stops_with_one_line(tmp_path, tiny_gpt2):
    model = tiny_gpt2()
    linear_stage(model, _blocks(), _blocks(4, seed=1), _quick(), HARDWARE, tmp_path / "linear")
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(float("nan"))  # the loss that picks the result is NaN
    with pytest.raises(GainCellError, match=r"^calibrated: the statistics or the loss are not finite at iteration \d+"):
        calibrate(model, _blocks(4), CalibrationConfig(max_iterations=3), HARDWARE)


def test_calibration_refuses_models_without_targets(tiny_gpt2):
    with pytest.raises(GainCellError, match="run the linear stage"):
        calibrate(gaincell.convert(tiny_gpt2(), HARDWARE), _blocks(4))


def test_recipe_defaults_are_the_papers_and_unknown_keys_are_named():
    recipe = recipe_from_dict({"data": {"text": "corpus.txt"}})
    assert recipe.linear.max_steps == 3000 and recipe.linear.batch_size * recipe.linear.grad_accum == 16 * 120
    assert recipe.nonlinear.max_steps == 13000 and recipe.linear.lr == 6e-4 and recipe.linear.weight_decay == 0.1
    assert recipe.hardware_config() == preset("paper")
    with pytest.raises(GainCellError, match=r"^linear: unknown key 'stepz' \(expected one of: batch_size, betas, "):
        recipe_from_dict({"data": {"text": "x"}, "linear": {"stepz": 1}})
    with pytest.raises(GainCellError, match="exactly one of text"):
        recipe_from_dict({})
    with pytest.raises(GainCellError, match="preset must be one of"):
        recipe_from_dict({"data": {"text": "x"}, "hardware": {"preset": "nope"}})
    with pytest.raises(GainCellError, match=r"^calibration.tolerance must be a finite number > 0, got -1$"):
        recipe_from_dict({"data": {"text": "x"}, "calibration": {"tolerance": -1}})


def test_recipe_overrides_parse_as_toml(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text('model = "m"\n[data]\ntext = "c.txt"\n[hardware]\npreset = "paper"\n')
    recipe = read_recipe(
        path, ["linear.max_steps=7", "linear.warmup_steps=1", "hardware.window=64", "hardware.noise.read_noise=0.01"]
    )
    assert recipe.linear.max_steps == 7
    config = recipe.hardware_config()
    assert config.window == 64 and config.noise.read_noise == 0.01 and config.cell == preset("paper").cell


def test_set_switches_the_example_recipe_to_a_local_text_and_back():
    """``examples/adapt.toml`` reads a hub dataset; ``--set data.text=FILE`` replaces that source (it used to
    leave two and fail with "needs exactly one"), and ``--set data.dataset=NAME`` switches a text recipe back."""
    example = Path(__file__).resolve().parents[2] / "examples" / "adapt.toml"
    local = read_recipe(example, ["data.text=corpus.txt"]).data
    assert (local.text, local.dataset, local.dataset_config) == ("corpus.txt", None, None)
    assert local.block_size == 1024 and local.eval_blocks == 200  # the rest of [data] is kept
    hub = read_recipe(example, ["data.text=corpus.txt", "data.dataset=wikitext", "data.dataset_config=x"]).data
    assert (hub.text, hub.dataset, hub.dataset_config) == (None, "wikitext", "x")


def _pretrained_dir(tmp_path, pydoc_text, tokenizer, tiny_gpt2):
    text = pydoc_text[:60_000]
    model = tiny_gpt2()
    model.resize_token_embeddings(len(tokenizer))
    directory = tmp_path / "pretrained"
    gaincell.save(model, directory, tokenizer)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    return directory, corpus


STAGE = 'warmup_steps = 1\nbatch_size = 4\ngrad_accum = 1\nprogress_bar = false\nmixed_precision = "no"\n'


def test_adapt_cli_runs_the_three_stages_and_resumes(tmp_path, pydoc_text, tokenizer, tiny_gpt2, capsys):
    model_dir, corpus = _pretrained_dir(tmp_path, pydoc_text, tokenizer, tiny_gpt2)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f'model = "{model_dir}"\noutput_dir = "{tmp_path / "run"}"\n'
        f'[data]\ntext = "{corpus}"\nblock_size = 32\neval_blocks = 4\n'
        '[hardware]\npreset = "paper"\nwindow = 16\nsubtile_rows = 8\n'
        f"[linear]\nmax_steps = 4\n{STAGE}[calibration]\nmax_iterations = 5\nbatch_size = 4\n"
        f"[nonlinear]\nmax_steps = 3\n{STAGE}"
    )
    assert main(["adapt", str(recipe)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["linear"]["steps"] == 4 and summary["nonlinear"]["steps"] == 3
    assert summary["calibrated"]["iterations"] <= 5
    adapted = gaincell.load(tmp_path / "run" / "nonlinear" / "model")
    assert model_config(adapted) == preset("paper", window=16, subtile_rows=8)
    assert all(int(cell.target_count) == 4 for cell in gain_cell_layers(adapted))
    card = ModelCard.load(tmp_path / "run" / "nonlinear" / "model" / "README.md")  # the model card
    assert (
        card.data.library_name == "gaincell"
        and "| linear | 4 | 512 |" in card.text
        and "| nonlinear | 3 | 384 |" in card.text
    )
    assert (
        "896 training tokens in all" in card.text
        and '"s_sat": 80.0' in card.text
        and "held-out perplexity of the model after nonlinear" in card.text
    )
    assert main(["adapt", str(recipe)]) == 2  # refuses to overwrite
    assert "not empty" in capsys.readouterr().err
    for change, message in (
        ("hardware.window=8", "cannot resume .*run: hardware.window was 16, now 8"),
        ("linear.max_steps=8", "linear.max_steps was 4, now 8"),
    ):
        assert main(["adapt", str(recipe), "--resume", "--set", change]) == 2  # another run's settings
        assert re.search(message, capsys.readouterr().err)
    assert main(["adapt", str(recipe), "--resume"]) == 0  # every stage done: loads and returns
    (tmp_path / "run" / "nonlinear" / "summary.json").unlink()  # killed between saving the model and its summary
    assert main(["adapt", str(recipe), "--resume"]) == 0  # that stage is redone (from its last checkpoint)
    assert json.loads((tmp_path / "run" / "nonlinear" / "summary.json").read_text())["steps"] == 3


def test_resume_refuses_a_folder_no_run_was_started_in(tmp_path, capsys):
    """The user's own files in a folder named as output_dir are never overwritten, with --resume or without."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'model = "gpt2"\n[data]\ntext = "{tmp_path / "corpus.txt"}"\n')
    folder = tmp_path / "mine"
    (folder / "linear").mkdir(parents=True)
    (folder / "linear" / "metrics.jsonl").write_text("my own numbers\n")
    assert main(["adapt", str(recipe), "--resume", "--output-dir", str(folder)]) == 2
    assert "holds no gaincell adapt run (no readable run.json)" in capsys.readouterr().err
    assert (folder / "linear" / "metrics.jsonl").read_text() == "my own numbers\n"
    assert sorted(path.name for path in folder.rglob("*")) == ["linear", "metrics.jsonl"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('linear.log_jsonl="/some/other/file"', "linear.log_jsonl must be a file name inside the output directory"),
        ('linear.log_jsonl="../../x.jsonl"', "linear.log_jsonl must be a file name inside the output directory"),
        ("data.text=5", "data.text must be a non-empty string, got 5"),
        ("data.block_size=1", "data.block_size must be an integer >= 2, got 1"),
    ],
)
def test_recipe_fields_are_checked_before_anything_loads(tmp_path, override, message, capsys):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('model = "no-such-model"\n[data]\ntext = "corpus.txt"\n')
    assert main(["adapt", str(recipe), "--set", override, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_overrides_merge_nested_tables_at_any_depth(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[data]\ntext = "corpus.txt"\n[hardware]\npreset = "paper"\n')
    chip = read_recipe(recipe, ["hardware.periphery.adc.levels=16"]).hardware_config()
    assert chip.periphery.adc == preset("paper").periphery.adc.__class__(-1.0, 1.0, 16)
    assert chip.periphery.q == preset("paper").periphery.q


def test_adapt_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["adapt", str(tmp_path / "missing.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("model = \n")
    assert main(["adapt", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
