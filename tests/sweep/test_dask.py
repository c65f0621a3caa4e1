"""``--engine dask``: the points on Dask distributed workers give the same results as a local run."""

from __future__ import annotations

import json

import pytest
from sweep_files import spec_dict, write_toml

from gaincell.cli import main
from gaincell.sweep.run import run_sweep, spec_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")

distributed = pytest.importorskip("distributed")  # the dev extra installs it; CI has it


def small(files, out, **changes) -> dict:
    data = {"output_dir": str(out), "max_tokens": 200, "grid": {"window": [16, 32], "read_noise": [0.0, 0.2]}}
    return spec_dict(files, **{**data, **changes})


def test_a_local_dask_cluster_gives_the_local_results(files, tmp_path):
    run_sweep(spec_from_dict(small(files, tmp_path / "local")), progress=False)
    summary = run_sweep(spec_from_dict(small(files, tmp_path / "dask")), jobs=2, engine="dask", progress=False)
    assert len(summary["rows"]) == 5
    for name in ("results.json",):
        assert (tmp_path / "dask" / name).read_text() == (tmp_path / "local" / name).read_text()
    assert "a local Dask cluster of 2 worker(s)" in (tmp_path / "dask" / "report.md").read_text()


def test_a_scheduler_address_runs_on_its_workers(files, tmp_path, capsys):
    config = write_toml(tmp_path / "s.toml", small(files, tmp_path / "out", grid={"window": [16, 32]}, seeds=[0]))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        assert main(["sweep", config, "--engine", "dask", "--scheduler", cluster.scheduler_address, "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("2 points")
    assert f"the Dask cluster at {cluster.scheduler_address}" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--scheduler", "tcp://127.0.0.1:9"], "--scheduler: only with --engine dask, got --engine local"),
        (["--engine", "dask", "--scheduler", "nonsense://x"], "--scheduler: cannot reach a Dask scheduler at nonsense://x"),
        (["--dashboard", ":8787"], "--dashboard: only with --engine dask on a local cluster (without --scheduler)"),
    ],
)
def test_bad_engine_flags_are_one_line_and_write_nothing(files, tmp_path, capsys, flags, message):
    config = write_toml(tmp_path / "s.toml", small(files, tmp_path / "out"))
    assert main(["sweep", config, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gaincell sweep: error: {message}"), err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_a_scheduler_that_goes_away_mid_run_is_one_line_and_keeps_the_finished_points(files, tmp_path, capsys, monkeypatch):
    import dask

    import gaincell.sweep.run as sweep_run

    config = write_toml(tmp_path / "s.toml", small(files, tmp_path / "out", seeds=[0]))
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None)
    run_dask = sweep_run.run_dask

    def scheduler_dies_after_one_point(client, spec, units, threads, model=None):
        records = run_dask(client, spec, units, threads, model)
        yield next(records)
        cluster.close()  # an external scheduler killed mid-run
        yield from records

    monkeypatch.setattr(sweep_run, "run_dask", scheduler_dies_after_one_point)
    try:
        with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):  # the client's reconnect gives up soon
            code = main(["sweep", config, "--engine", "dask", "--scheduler", cluster.scheduler_address, "--no-progress"])
    finally:
        cluster.close()
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert (
        err.startswith("gaincell sweep: error: --scheduler: the Dask scheduler went away mid-run (") and err.count("\n") == 1
    )
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(record["index"] >= 0 for record in records) == [False, True]  # the reference and the finished point
