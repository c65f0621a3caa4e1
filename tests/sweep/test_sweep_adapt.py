"""``[adapt]``: per-point scaler initialisation and distillation, deterministic, resumable mid point, validated first."""

from __future__ import annotations

import json

import pytest
import torch
from sweep_files import spec_dict, write_toml

import gaincell
from gaincell.adaptation import train as training
from gaincell.cli import main
from gaincell.errors import GainCellError
from gaincell.hf.layer import gain_cell_layers
from gaincell.sweep.run import run_sweep, spec_from_dict
from gaincell.sweep.spec import Unit
from gaincell.sweep.worker import Evaluator

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, BATCH, BLOCK = 4, 2, 64


def adapt_table(files, distilled: bool = True, **changes) -> dict:
    table = {"teacher": str(files / "model"), "text": str(files / "text.txt"), "initialise": {"batch_size": 4, "batches": 2}}
    if distilled:
        distill = {"lr": 3e-3, "batch_size": BATCH, "checkpoint_every": 1}
        table |= {"distill_tokens": STEPS * BATCH * BLOCK, "distill": distill}
    return {**table, **changes}


def adapted(files, out, distilled: bool = True, **changes) -> dict:
    grid = {"periphery.q.high": [1.0, 0.5]}  # the DAC range the initialisation fills
    data = {"output_dir": str(out), "max_tokens": 130, "seeds": [0], "grid": grid, "adapt": adapt_table(files, distilled)}
    return spec_dict(files, **{**data, **changes})


def without_times(record: dict) -> dict:
    record = {k: v for k, v in record.items() if k != "seconds"}
    return {**record, "adaptation": {k: v for k, v in record["adaptation"].items() if k != "seconds"}}


def test_each_point_gets_its_own_adaptation_in_any_order(files, tmp_path):
    spec = spec_from_dict(adapted(files, tmp_path / "o"))
    units = [Unit(0, spec.points[0], 0), Unit(1, spec.points[1], 0)]
    forward, backward = Evaluator(spec), Evaluator(spec)
    first = [forward.evaluate(unit) for unit in units]
    second = [backward.evaluate(unit) for unit in reversed(units)][::-1]
    assert [without_times(r) for r in first] == [without_times(r) for r in second]  # order does not matter
    assert first[0]["ppl"] != pytest.approx(first[1]["ppl"])
    adaptation = first[0]["adaptation"]
    assert adaptation["distill_steps"] == STEPS and adaptation["distill_tokens"] == STEPS * BATCH * BLOCK
    assert adaptation["statistics_tokens"] == 8 * BLOCK and adaptation["tokens"] == (8 + STEPS * BATCH) * BLOCK
    plain = spec_from_dict({**adapted(files, tmp_path / "p"), "adapt": None})
    unadapted = Evaluator(plain).evaluate(units[0])
    assert unadapted["ppl"] != pytest.approx(first[0]["ppl"]) and unadapted["adaptation"] is None


def test_initialisation_alone_sets_the_scalers_without_training(files, tmp_path):
    spec = spec_from_dict(adapted(files, tmp_path / "o", distilled=False))
    evaluator = Evaluator(spec)
    weights = {name: p.detach().clone() for name, p in evaluator.model.named_parameters()}
    record = evaluator.evaluate(Unit(0, spec.points[0], 0))
    assert record["adaptation"]["distill_steps"] == 0 and record["adaptation"]["tokens"] == 8 * BLOCK
    parameters = evaluator.model.named_parameters()
    changed = [name for name, p in parameters if name in weights and not torch.equal(p, weights[name])]
    assert changed == []  # no gradient: only the scalers the conversion added are set
    q_scales = []
    for index in (0, 1):  # each point's scalers fill its own DAC range: a = range / (2 sigmas σ)
        evaluator.evaluate(Unit(index, spec.points[index], 0))
        q_scales.append(gain_cell_layers(evaluator.model)[0].scalers.a_q.detach().clone())
    torch.testing.assert_close(q_scales[1], q_scales[0] * 0.5, rtol=1e-5, atol=0)


def test_a_sweep_killed_mid_point_finishes_it_from_its_checkpoint(files, tmp_path, monkeypatch):
    whole = run_sweep(spec_from_dict(adapted(files, tmp_path / "whole")), progress=False)
    assert all(row["adaptation"][0]["distill_steps"] == STEPS for row in whole["rows"][1:])

    after_step, steps = training._Run.after_step, []

    def killed_in_the_second_point(self, model, step, *args):
        after_step(self, model, step, *args)  # the checkpoint of this step is written
        steps.append(step)
        if len(steps) == STEPS + 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training._Run, "after_step", killed_in_the_second_point)
    killed = spec_from_dict(adapted(files, tmp_path / "killed"))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(killed, progress=False)
    assert len((tmp_path / "killed" / "results.jsonl").read_text().splitlines()) == 2  # reference, point 0
    assert (tmp_path / "killed" / "adapt" / "point-1-seed-0" / "checkpoints").is_dir()
    steps.clear()
    resumed = run_sweep(killed, progress=False)
    assert steps == [3, 4]  # point 0 skipped, point 1 finished from step 2
    assert (tmp_path / "killed" / "results.json").read_text() == (tmp_path / "whole" / "results.json").read_text()
    assert resumed["rows"] == whole["rows"]
    assert not (tmp_path / "killed" / "adapt" / "point-1-seed-0").exists()
    report = (tmp_path / "killed" / "report.md").read_text()
    assert "adaptation tokens | adaptation time |" in report and f"| {(8 + STEPS * BATCH) * BLOCK:,} | " in report


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"distil_tokens": 100}, "adapt: unknown key 'distil_tokens' (expected one of: "),
        ({"distill_tokens": -1}, "adapt.distill_tokens must be an integer >= 0, got -1"),
        ({"teacher": None}, "adapt.teacher must be a path to the pre-trained softmax model"),
        ({"teacher": "no/such/model"}, "adapt.teacher: no such directory no/such/model"),
        ({"text": "missing.txt"}, "adapt.text: no such text file"),
        ({"distill": {"lr": 0}}, "adapt.distill.lr must be a finite number > 0, got 0"),
        ({"distill": {"max_steps": 3}}, "adapt.distill: unknown key 'max_steps' (expected one of: "),
        ({"initialise": {"sigmas": -1}}, "adapt.initialise.sigmas must be a finite number > 0, got -1"),
        ({"distill_tokens": 0}, "adapt.distill: distillation settings given, but adapt.distill_tokens is 0"),
        ({"block_size": 4096}, "adapt.block_size"),
    ],
)
def test_a_bad_adapt_section_is_one_line_exit_2_and_writes_nothing(files, tmp_path, capsys, change, message):
    table = {k: v for k, v in adapt_table(files, **change).items() if v is not None}
    config = write_toml(tmp_path / "s.toml", adapted(files, tmp_path / "out", adapt=table))
    assert main(["sweep", config]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gaincell sweep: error: {message}"), err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_adapt_paths_expand_to_the_shared_data_folder(files, tmp_path, monkeypatch):
    monkeypatch.setenv("GAINCELL_DATA", str(files))
    table = adapt_table(files, teacher="$GAINCELL_DATA/model", text="$GAINCELL_DATA/text.txt")
    spec = spec_from_dict(adapted(files, tmp_path / "o", adapt=table))
    assert (spec.adapt["teacher"], spec.adapt["text"]) == (str(files / "model"), str(files / "text.txt"))
    assert json.loads(json.dumps(spec.adapt)) == spec.adapt  # plain data: it travels to workers and into the fingerprint


def adapted_base(files, path, **hardware):
    """The tiny model converted to the paper chip with scalers away from any initialisation, as training leaves them."""
    model = gaincell.load(files / "model")
    gaincell.convert(model, gaincell.preset("paper", window=32, subtile_rows=16, **hardware))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for cell in gain_cell_layers(model):
            for parameter in cell.scalers.parameters():
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    gaincell.save(model, path, gaincell.hf.pretrained.load_tokenizer(files / "model"))
    return model


def test_an_adapted_model_starts_each_point_from_its_trained_scalers_re_expressed_for_the_dac_range(files, tmp_path):
    base = adapted_base(files, tmp_path / "adapted")
    trained = [{n: p.detach().clone() for n, p in cell.scalers.named_parameters()} for cell in gain_cell_layers(base)]
    data = adapted(files, tmp_path / "o", distilled=False, model=str(tmp_path / "adapted"), context=32, stride=16)
    data["grid"] = {"periphery.q.low": [0.0, 0.2], "periphery.kv.high": [0.9, 0.45]}
    spec = spec_from_dict(data)
    assert spec.adapt["scalers"] == "remap"  # "auto" for a model saved with a gain-cell config
    evaluator = Evaluator(spec)
    for index, point in enumerate(spec.points):
        record = evaluator.evaluate(Unit(index, point, 0))
        assert record["adaptation"]["statistics_tokens"] == 0
        q_low, kv_high = point["periphery.q.low"], point["periphery.kv.high"]
        for cell, before in zip(gain_cell_layers(evaluator.model), trained, strict=True):
            # the map onto [0, 1] (q) and [0, 0.9] (k, v) moved onto the point's range, same relative place:
            # (a'x + b' - low') / (high' - low') = (a x + b - low) / (high - low)
            q_scale, kv_scale = (1.0 - q_low) / 1.0, kv_high / 0.9
            expected = {
                "a_q": before["a_q"] * q_scale, "b_q": q_low + before["b_q"] * q_scale,
                "a_k": before["a_k"] * kv_scale, "b_k": before["b_k"] * kv_scale,
                "a_v": before["a_v"] * kv_scale, "b_v": before["b_v"] * kv_scale,
                "a_o": before["a_o"], "b_o": before["b_o"],
            }  # fmt: skip
            for name, value in expected.items():
                torch.testing.assert_close(getattr(cell.scalers, name).detach(), value, rtol=1e-6, atol=1e-7)
        assert record["own_hardware"] == (index == 0)


def test_the_model_s_own_hardware_point_reproduces_the_reference_before_its_distillation(files, tmp_path):
    adapted_base(files, tmp_path / "adapted")
    data = adapted(files, tmp_path / "o", model=str(tmp_path / "adapted"), context=32, stride=16)
    data["grid"] = {"adc_levels": [8, 32]}
    data["base"] = {"token_rate": 1.25e6, "retention_time": 5e-3}  # ε = 0.8 µs / 5 ms = 1.6e-4, the preset's, rounded
    summary = run_sweep(spec_from_dict(data), progress=False)
    reference, low, own = summary["rows"]
    assert (low["own_hardware"], own["own_hardware"]) == (False, True)
    assert own["adaptation"][0]["ppl_start"] == pytest.approx(reference["ppl_mean"], rel=1e-6)
    assert own["adaptation"][0]["distill_steps"] > 0 and own["ppl_mean"] != pytest.approx(reference["ppl_mean"])
    report = (tmp_path / "o" / "report.md").read_text()
    assert "- consistency check: point 1 is the model's own hardware; before its distillation it scores" in report
    assert "reproduces it" in report and "DIFFERS" not in report


@pytest.mark.parametrize(
    ("scalers", "plain", "message"),
    [
        ("remap", True, "adapt.scalers: 'remap' re-expresses an adapted model's trained scalers, but the sweep's model"),
        ("stats", False, "adapt.scalers must be one of auto, statistics, remap, got 'stats'"),
    ],
)
def test_a_scaler_start_that_cannot_apply_is_refused(files, tmp_path, scalers, plain, message):
    model = files / "model" if plain else tmp_path / "adapted"
    if not plain:
        adapted_base(files, model)
    data = adapted(files, tmp_path / "o", adapt=adapt_table(files, distilled=False, scalers=scalers), model=str(model))
    with pytest.raises(GainCellError, match=message.replace("(", r"\(").replace("'", ".")):
        spec_from_dict(data)
