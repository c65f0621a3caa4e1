"""``[adapt]``: per-point scaler initialisation and distillation, deterministic, resumable mid point, validated first."""

from __future__ import annotations

import json

import pytest
import torch
from sweep_files import spec_dict, write_toml

from gaincell.adaptation import train as training
from gaincell.cli import main
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
