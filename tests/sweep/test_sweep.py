"""``gaincell sweep``: validation (one line, exit 2, nothing written), resume, knobs, cost, Pareto."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sweep_files import spec_dict, write_toml

import gaincell
from gaincell.cli import main
from gaincell.errors import GainCellError
from gaincell.hardware.constants import load_technology
from gaincell.hardware.models import load_shape
from gaincell.sweep.run import mark_pareto, point_config, point_cost, read_spec, run_sweep, spec_from_dict
from gaincell.sweep.worker import Evaluator

pytestmark = pytest.mark.usefixtures("one_thread")


# -- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"windw": 3}, "sweep: unknown key 'windw' (expected one of: adapt, adc_cost, base, batch_size, "),
        ({"grid": {}}, "grid: empty table"),
        ({"grid": {"window": []}}, "grid.window must be a non-empty list of values, got []"),
        ({"grid": {"adc_levels": [8, 1]}}, "grid.adc_levels must be an integer >= 2, got 1"),
        ({"grid": {"adc_range": [0]}}, "grid.adc_range must be a finite number > 0, got 0"),
        ({"context": 1}, "context must be an integer >= 2, got 1"),
        ({"calibrate": "yes"}, "calibrate must be true or false, got 'yes'"),
        ({"grid": {"adc_bits": [4]}}, "grid: unknown key 'adc_bits' (expected one of: adc_high, adc_levels, "),
        ({"model": "no/such/model"}, "model: no such directory no/such/model"),
        ({"text": "missing.txt"}, "text: no such text file"),
        ({"seeds": []}, "seeds must be a non-empty list of chip seeds (integers >= 0), got []"),
        ({"grid": {"retention_time": [0.005]}}, "grid.retention_time: needs token_rate"),
        ({"calibration": {"max_iter": 3}}, "calibration: unknown key 'max_iter' (expected one of: batch_size, "),
        ({"calibration": {"tolerance": 0}}, "calibration.tolerance must be a finite number > 0, got 0"),
        ({"adc_cost": "free"}, "adc_cost must be one of scaled, fixed, got 'free'"),
        ({"device": "abacus"}, "device must be auto, cpu, cuda or cuda:N, got 'abacus'"),
        ({"dtype": "int8"}, "dtype must be one of float32, bfloat16, float16, fp32, bf16, fp16, got 'int8'"),
    ],
)
def test_bad_config_is_one_line_exit_2_and_writes_nothing(files, tmp_path, capsys, change, message):
    data = spec_dict(files, output_dir=str(tmp_path / "out"), **change)
    config = write_toml(tmp_path / "sweep.toml", data)
    assert main(["sweep", config]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gaincell sweep: error: {message}"), err
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_calibration_without_targets_is_one_line_and_writes_nothing(files, tmp_path, capsys):
    config = write_toml(tmp_path / "sweep.toml", spec_dict(files, output_dir=str(tmp_path / "out"), calibrate=True))
    assert main(["sweep", config]) == 2
    err = capsys.readouterr().err
    assert "calibrate: model" in err and "has no calibration targets" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_knobs_aliases_paths_and_derived(files):
    tech = load_technology("paper")
    spec = spec_from_dict(
        spec_dict(
            files,
            base={"periphery": {"s_sat": 60.0}},
            grid={"adc_range": [0.5], "token_rate": [1000.0], "cell": ["linear"], "periphery.q.levels": [4]},
        )
    )
    config = point_config(spec, spec.points[0], 3)
    assert (config.periphery.adc.low, config.periphery.adc.high) == (-0.5, 0.5)
    assert config.leakage == pytest.approx(1e-3 / tech.array.retention_time)
    assert (config.cell.kind, config.periphery.q.levels, config.periphery.s_sat, config.noise.seed) == ("linear", 4, 60.0, 3)
    assert spec.knobs == ("adc_range", "token_rate", "cell", "periphery.q.levels")


def test_cost_scales_with_window_and_adc_levels(files):
    shape, tech = load_shape(str(files / "model")), load_technology("paper")
    spec = spec_from_dict(spec_dict(files))
    cost = {tuple(p.values()): point_cost(shape, point_config(spec, p, 0), tech) for p in spec.points}
    assert cost[(8, 16, 0.0)]["energy_per_token_j"] < cost[(32, 16, 0.0)]["energy_per_token_j"]
    assert cost[(8, 16, 0.0)]["area_m2"] < cost[(8, 32, 0.0)]["area_m2"]
    assert cost[(8, 16, 0.0)] == cost[(8, 16, 0.2)]  # read noise costs nothing in the model
    fixed = point_cost(shape, point_config(spec, spec.points[0], 0), tech, "fixed")
    assert fixed["energy_per_token_j"] > cost[(8, 16, 0.0)]["energy_per_token_j"]  # the preset's 32-level ADC


def test_the_normaliser_is_a_knob_and_is_costed(files):
    shape, tech = load_shape(str(files / "model")), load_technology("paper")
    spec = spec_from_dict(spec_dict(files, grid={"normaliser": [False, True]}))
    off, on = (point_config(spec, p, 0) for p in spec.points)
    assert (off.periphery.normaliser, on.periphery.normaliser) == (False, True)
    cost_off, cost_on = (point_cost(shape, config, tech) for config in (off, on))
    assert all(cost_on[key] > cost_off[key] for key in ("energy_per_token_j", "latency_per_token_s", "area_m2"))


def test_pareto_fronts_against_energy_and_area():
    costs = [(1, 5, 9), (2, 4, 5), (3, 3, 6), (4, 2, 4), (2, 1, 7)]  # energy, area, perplexity
    rows = [{"cost": {"energy_per_token_j": e, "area_m2": a}, "ppl_mean": p} for e, a, p in costs]
    mark_pareto(rows)
    assert [row["pareto"] for row in rows] == [True, True, False, True, False]
    assert [row["pareto_area"] for row in rows] == [False, False, False, True, True]


# -- running ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "shape"), [('{"ppl": 3.0}', "has no 'key'"), ("[1, 2]", "is a JSON list")])
def test_a_results_line_that_is_no_points_record_is_named(files, tmp_path, line, shape):
    spec = spec_from_dict(spec_dict(files, output_dir=str(tmp_path / "run")))
    evaluate = Evaluator.evaluate
    try:  # a first point, then the user's line
        Evaluator.evaluate = lambda self, unit: (_ for _ in ()).throw(KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            run_sweep(spec, progress=False)
    finally:
        Evaluator.evaluate = evaluate
    (tmp_path / "run" / "results.jsonl").write_text(line + "\n")
    with pytest.raises(GainCellError, match=rf"results.jsonl: line 1 {shape}, so it is no sweep point's record"):
        run_sweep(spec, progress=False)


def test_killed_sweep_resumes_to_the_same_json(files, tmp_path, monkeypatch):
    whole = spec_from_dict(spec_dict(files, output_dir=str(tmp_path / "whole")))
    summary = run_sweep(whole, progress=False)
    noisy = [row for row in summary["rows"] if row["point"].get("read_noise")]
    assert all(len(row["ppl"]) == 2 and row["ppl_std"] > 0 for row in noisy)  # two chip seeds where noise
    assert all(len(row["ppl"]) == 1 for row in summary["rows"] if not row["point"].get("read_noise"))

    killed = spec_from_dict(spec_dict(files, output_dir=str(tmp_path / "killed")))
    evaluate, calls = Evaluator.evaluate, []

    def dies_after_five(self, unit):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(unit)
        return evaluate(self, unit)

    monkeypatch.setattr(Evaluator, "evaluate", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(killed, progress=False)
    monkeypatch.setattr(Evaluator, "evaluate", evaluate)
    lines = (tmp_path / "killed" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 5 and not (tmp_path / "killed" / "results.json").exists()
    with open(tmp_path / "killed" / "results.jsonl", "a") as handle:
        handle.write('{"key": "torn')  # a kill in the middle of a write
    resumed = run_sweep(killed, progress=False)
    assert resumed["wall_seconds_this_run"] > 0
    for name in ("results.json",):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "whole" / name).read_text()

    def lines(name):  # every field but the measuring time
        records = [json.loads(line) for line in (tmp_path / name / "results.jsonl").read_text().splitlines()]
        return sorted(json.dumps({k: v for k, v in r.items() if k != "seconds"}, sort_keys=True) for r in records)

    assert lines("killed") == lines("whole")
    report = (tmp_path / "killed" / "report.md").read_text()
    assert "| 0 | 8 | 16 | 0 |" in report and "![pareto.png](pareto.png)" in report
    for plot in ("ppl_vs_adc_levels.png", "ppl_vs_window.png", "ppl_vs_read_noise.png", "pareto.png", "pareto_area.png"):
        assert (tmp_path / "killed" / plot).stat().st_size > 1000


def test_reference_and_points_match_gaincell_eval(files, tmp_path):
    """The reference row is the plain model's strided perplexity; a point is the converted model's."""
    from gaincell.evaluation.perplexity import strided_perplexity

    spec = spec_from_dict(spec_dict(files, output_dir=str(tmp_path / "o"), grid={"window": [16]}, seeds=[0]))
    rows = run_sweep(spec, progress=False)["rows"]
    evaluator = Evaluator(spec)
    plain = strided_perplexity(evaluator.model, evaluator.tokens, 64, 32)["ppl"]
    converted = gaincell.convert(evaluator.model, point_config(spec, {"window": 16}, 0))
    assert rows[0]["ppl_mean"] == pytest.approx(plain)
    assert rows[1]["ppl_mean"] == pytest.approx(strided_perplexity(converted, evaluator.tokens, 64, 32)["ppl"])
    assert rows[0]["cost"] is None and rows[1]["cost"]["energy_per_token_j"] > 0


def test_per_point_calibration_on_a_model_with_targets(files, tmp_path):
    """A linear-stage model (targets recorded) is calibrated per point, from the same scalers each time."""
    from gaincell.hf.layer import gain_cell_layers

    model = gaincell.load(files / "model")
    linear = gaincell.preset("linear", window=32, subtile_rows=16)  # a read-out gain that makes tiny outputs visible
    gaincell.convert(model, linear.replace(periphery=dataclasses.replace(linear.periphery, readout_gain=2.0)))
    ids = torch.randint(1, model.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))
    model.train()
    for cell in gain_cell_layers(model):
        cell.recording = True
    with torch.no_grad():
        model(input_ids=ids)
    for cell in gain_cell_layers(model):
        cell.recording = False
    gaincell.save(model, tmp_path / "adapted", gaincell.hf.pretrained.load_tokenizer(files / "model"))
    data = spec_dict(files, model=str(tmp_path / "adapted"), output_dir=str(tmp_path / "o"), seeds=[0])
    data |= {"calibrate": True, "calibration": {"max_iterations": 4, "batch_size": 2}, "grid": {"cell": ["polynomial"]}}
    rows = run_sweep(spec_from_dict(data), progress=False)["rows"]
    assert rows[0]["leakage"] == pytest.approx(1.6e-4) and rows[1]["point"] == {"cell": "polynomial"}
    (calibration,) = rows[1]["calibration"]
    assert 1 <= calibration["iterations"] <= 4 and calibration["final_error"] >= 0
    assert calibration["converged"] == (calibration["final_error"] < 1e-4)
    uncalibrated = run_sweep(spec_from_dict({**data, "calibrate": False, "output_dir": str(tmp_path / "u")}), progress=False)
    assert uncalibrated["rows"][1]["ppl_mean"] != pytest.approx(rows[1]["ppl_mean"])
    assert uncalibrated["rows"][0]["ppl_mean"] == pytest.approx(rows[0]["ppl_mean"])  # the reference is never calibrated


def test_another_sweep_in_the_same_folder_is_refused(files, tmp_path):
    run_sweep(spec_from_dict(spec_dict(files, output_dir=str(tmp_path / "o"), grid={"window": [16]})), progress=False)
    other = spec_from_dict(spec_dict(files, output_dir=str(tmp_path / "o"), grid={"window": [32]}))
    with pytest.raises(GainCellError, match="output_dir: .* holds a different sweep"):
        run_sweep(other, progress=False)


def test_overrides_from_the_command_line(files, tmp_path):
    config = write_toml(tmp_path / "s.toml", spec_dict(files))
    spec = read_spec(config, ["grid.window=[16]", "max_tokens=200", "calibration.max_iterations=3"])
    assert spec.points[0]["window"] == 16 and len(spec.points) == 4 and spec.max_tokens == 200
    assert spec.calibration == {"max_iterations": 3}


def test_device_and_dtype_from_the_command_line(files, tmp_path, monkeypatch):
    """--device / --dtype are the file's fields: the model loads there and so; where is not in the fingerprint."""
    config = write_toml(tmp_path / "s.toml", spec_dict(files, output_dir=str(tmp_path / "o")))
    seen = []
    done = {"rows": [], "wall_seconds_this_run": 0.0}
    monkeypatch.setattr("gaincell.commands.sweep.run_sweep", lambda spec, **kwargs: seen.append(spec) or done)
    assert main(["sweep", config, "--device", "cpu", "--dtype", "bf16"]) == 0
    assert (seen[0].device, seen[0].dtype) == ("cpu", "bf16")
    plain = read_spec(config)
    assert plain.fingerprint() == dataclasses.replace(plain, device="cpu").fingerprint() != seen[0].fingerprint()
    assert {p.dtype for p in Evaluator(seen[0]).model.parameters()} == {torch.bfloat16}


@pytest.mark.slow
def test_parallel_jobs_give_the_same_results(files, tmp_path):
    one = run_sweep(spec_from_dict(spec_dict(files, output_dir=str(tmp_path / "one"))), progress=False)
    two = run_sweep(spec_from_dict(spec_dict(files, output_dir=str(tmp_path / "two"))), jobs=2, progress=False)
    assert one["rows"] == two["rows"]


def test_sweep_help_does_not_import_transformers():
    code = (
        "import sys\nfrom gaincell.cli import main\ntry:\n    main(['sweep', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'transformers', 'datasets'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


PARENT = """
import multiprocessing, os, sys, time
from gaincell.sweep.worker import end_with_parent

def child(parent):
    end_with_parent(parent, interval=0.1)
    time.sleep(120)

if __name__ == "__main__":
    worker = multiprocessing.get_context("spawn").Process(target=child, args=(os.getpid(),))
    worker.start()
    print(worker.pid, flush=True)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie has ended


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_a_worker_ends_when_its_parent_is_killed(tmp_path):
    """kill -9 of a --jobs N sweep's parent: its spawned workers end too instead of running on."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    assert _alive(worker)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)


def test_a_point_whose_perplexity_is_not_finite_is_a_failed_point(files, tmp_path, monkeypatch, capsys):
    import gaincell.sweep.worker as worker

    measured = worker.strided_perplexity

    def nan_at_window_16(model, *args, **kwargs):
        result = measured(model, *args, **kwargs)
        window = (getattr(model.config, "gaincell", None) or {}).get("window")  # None: the reference, as loaded
        return {**result, "ppl": float("nan"), "nll": float("nan")} if window == 16 else result

    monkeypatch.setattr(worker, "strided_perplexity", nan_at_window_16)
    data = spec_dict(files, output_dir=str(tmp_path / "out"), seeds=[0], grid={"window": [16, 32]})
    config = write_toml(tmp_path / "sweep.toml", data)
    assert main(["sweep", str(config), "--no-progress"]) == 1
    assert "1 point(s) failed (not a finite perplexity): 0" in capsys.readouterr().err
    rows = json.loads((tmp_path / "out" / "results.json").read_text(), parse_constant=pytest.fail)["rows"]
    failed, fine = (next(r for r in rows if r["point"] == {"window": w}) for w in (16, 32))
    assert failed["failed"] == "perplexity is nan (not a finite number)" and failed["ppl_mean"] is None
    assert not failed.get("pareto") and fine["failed"] is None and fine["ppl_mean"] > 1
    assert "failed: perplexity is nan" in (tmp_path / "out" / "report.md").read_text()


def test_pareto_plot_numbers_crowded_front_points_and_lists_them_beside_the_axes(monkeypatch, tmp_path):
    """Front points a hair apart (as near ppl 6.5 in the committed example) used to get overlapping text labels;
    now each gets a number and the settings are listed, once each, to the right of the axes. The committed
    examples/sweep-stories260K plots are re-rendered from their results.json with this code."""
    from matplotlib.figure import Figure

    from gaincell.sweep.report import write_plots

    drawn = {}
    savefig = Figure.savefig

    def record(figure, handle, **kwargs):
        drawn[len(drawn)] = ([text.get_text() for text in figure.axes[0].texts], [text.get_text() for text in figure.texts])
        return savefig(figure, handle, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    rows = [
        {"index": i, "point": {"adc_levels": levels}, "ppl_mean": ppl, "ppl_std": 0.0, "pareto": True, "pareto_area": True,
         "cost": {"energy_per_token_j": energy, "area_m2": energy * 1e-6}}
        for i, (levels, ppl, energy) in enumerate([(16, 6.55, 141.3e-9), (32, 6.47, 141.31e-9), (64, 6.41, 141.32e-9)])
    ]  # fmt: skip
    written = write_plots({"rows": rows, "knobs": ["adc_levels"]}, tmp_path)
    assert [path.name for path in written][-2:] == ["pareto.png", "pareto_area.png"]
    labels, listing = drawn[len(drawn) - 1]
    assert labels == ["1", "2", "3"]
    assert listing == ["Pareto front\n1: adc_levels=16 (ppl 6.55)\n2: adc_levels=32 (ppl 6.47)\n3: adc_levels=64 (ppl 6.41)"]
