"""Where the paper's tasks read their data: a local folder chosen or found, else lm-eval's own download.

A user with only the repository and internet gets lm-eval's download; offline, the local files. Without
either, one line says both ways. No test here touches the hub: the download is replaced where it is run.
"""

import pytest

from gaincell.errors import GainCellError
from gaincell.evaluation import harness, tasks


@pytest.fixture
def no_shared_data(monkeypatch, tmp_path):
    """A user without ../shared: ``$GAINCELL_DATA`` names an empty folder."""
    monkeypatch.setenv("GAINCELL_DATA", str(tmp_path))
    return tmp_path


def test_without_local_data_the_plan_is_lm_evals_download(no_shared_data, monkeypatch):
    for name in tasks.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    plan = harness.plan_tasks("table1")
    assert plan.hub and plan.task_data is None and plan.local == (*tasks.PAPER_TASKS, "wikitext")


def test_offline_without_local_data_one_line_names_both_ways(no_shared_data, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(GainCellError) as raised:
        harness.plan_tasks("paper")
    message = str(raised.value)
    assert "cannot download arc_easy" in message and "HF_DATASETS_OFFLINE" in message
    assert "with internet" in message and "--task-data DIR" in message and "GAINCELL_DATA" in message


def test_local_data_chosen_or_found_is_used_instead_of_the_hub(no_shared_data):
    (no_shared_data / "tasks" / "piqa").mkdir(parents=True)
    row = '{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}\n'  # the columns lm-eval's piqa reads, checked
    (no_shared_data / "tasks" / "piqa" / "validation.jsonl").write_text(row)
    found = harness.plan_tasks("piqa")
    assert not found.hub and found.task_data == (no_shared_data / "tasks").resolve()
    chosen = harness.plan_tasks("piqa", task_data=no_shared_data / "tasks")
    assert not chosen.hub and chosen.task_data == found.task_data


def test_a_failed_download_is_one_line_naming_both_ways(no_shared_data, monkeypatch, tiny_gpt2, tokenizer):
    import lm_eval.tasks

    class Unreachable:
        def __init__(self, include_path=None, include_defaults=True):
            assert include_defaults  # lm-eval's own task definitions
            self.include_path = include_path

        def load(self, names):
            raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Unreachable)
    plan = harness.TaskPlan(("arc_easy",))
    assert plan.hub
    model = tiny_gpt2(vocab_size=len(tokenizer)).eval()
    with pytest.raises(GainCellError) as raised:
        harness.run_tasks(model, tokenizer, plan, limit=2)
    message = str(raised.value)
    assert message.startswith("task data: lm-eval could not download arc_easy: Couldn't reach 'allenai/ai2_arc'")
    assert "with internet" in message and "--task-data DIR" in message
