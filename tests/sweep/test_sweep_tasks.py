"""``[tasks]``: lm-eval's downstream tasks scored at every sweep point, from the local task files."""

import json

import pytest
from sweep_files import spec_dict, write_toml

from gaincell.cli import main
from gaincell.sweep.run import run_sweep, spec_from_dict

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.needs_data("tasks")]


def with_tasks(files, out, **tasks) -> dict:
    table = {"names": ["arc_easy", "lambada_openai"], "limit": 3, "batch_size": 4, **tasks}
    return spec_dict(files, output_dir=str(out), seeds=[0], max_tokens=130, grid={"adc_levels": [4, 32]}, tasks=table)


def test_every_point_and_the_reference_run_the_tasks(files, tmp_path, shared_data):
    spec = spec_from_dict(with_tasks(files, tmp_path / "o", task_data=str(shared_data / "tasks")))
    assert spec.tasks["names"] == ["arc_easy", "lambada_openai"] and spec.tasks["limit"] == 3
    summary = run_sweep(spec, progress=False)
    for row in summary["rows"]:
        assert set(row["tasks"]) == {"arc_easy", "lambada_openai"}
        assert all(0.0 <= value <= 1.0 for value in row["tasks"].values())
    records = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert all(record["tasks"]["samples"] == {"arc_easy": 3, "lambada_openai": 3} for record in records)
    report = (tmp_path / "o" / "report.md").read_text()
    assert "- downstream tasks (lm-eval, local files, first 3 items per task)" in report
    assert "| perplexity | vs ref. | arc_easy | lambada_openai | energy / token |" in report
    again = run_sweep(spec_from_dict(with_tasks(files, tmp_path / "p")), progress=False)  # the default task folder
    assert [row["tasks"] for row in again["rows"]] == [row["tasks"] for row in summary["rows"]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"names": ["arc_eesy"]}, "tasks: unknown task 'arc_eesy'"),
        ({"names": 3}, "tasks.names must be a task or group name, or a list of them"),
        ({"limit": 0}, "tasks.limit must be an integer >= 1, got 0"),
        ({"max_length": 1}, "tasks.max_length must be an integer >= 2, got 1"),
        ({"task_data": "no/such/folder"}, "tasks.task_data: task data: no such folder"),
        ({"limt": 3}, "tasks: unknown key 'limt' (expected one of: "),
    ],
)
def test_a_bad_tasks_section_is_one_line_exit_2_and_writes_nothing(files, tmp_path, capsys, change, message):
    config = write_toml(tmp_path / "s.toml", with_tasks(files, tmp_path / "out", **change))
    assert main(["sweep", config]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gaincell sweep: error: {message}"), err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
