"""A sweep's ``[tasks]`` section: the downstream tasks ``gaincell eval`` runs, scored at every point.

Perplexity alone may hide what a chip costs a model that is big enough to answer questions; the
paper reads its Table 1 (SPEC §5). Per point, after the perplexity, the point's model runs the
named lm-eval tasks from the local task files (:mod:`gaincell.evaluation.harness`)::

    [tasks]
    names = "paper"                       # a group (paper, table1), a task, or a list of them
    limit = 200                           # items per task (default: all); the report states it
    task_data = "$GAINCELL_DATA/tasks"    # default: $GAINCELL_DATA/tasks, else ../shared/data/tasks
    batch_size = 8                        # requests per forward (scores equal batch size 1)
    max_length = 512                      # longest request (default: the model's positions)

The table is checked here without torch or lm-eval; the worker runs it.
"""

from __future__ import annotations

from typing import Any

from gaincell.datadir import expand_data_path
from gaincell.errors import GainCellError
from gaincell.evaluation.tasks import MAIN_METRICS, check_task_data, resolve_tasks, task_data_folder
from gaincell.validation import check_int, check_table, fail, reject_unknown

TASK_KEYS = ("names", "limit", "task_data", "batch_size", "max_length")


def tasks_from_dict(value: Any) -> dict | None:
    """The checked ``[tasks]`` table (names resolved, the data folder found and complete), or None."""
    if value is None:
        return None
    check_table("tasks", value)
    reject_unknown("tasks", value, TASK_KEYS)
    names = value.get("names")
    if not (isinstance(names, str) or (isinstance(names, list) and all(isinstance(n, str) for n in names))):
        fail("tasks.names", 'a task or group name, or a list of them (e.g. "paper")', names)
    resolved = resolve_tasks(names)
    table = {"names": resolved, "limit": value.get("limit"), "batch_size": value.get("batch_size", 8)}
    table["max_length"] = value.get("max_length")
    for name, minimum in (("limit", 1), ("batch_size", 1), ("max_length", 2)):
        if table[name] is not None or name == "batch_size":
            check_int(f"tasks.{name}", table[name], minimum)
    try:  # last: every other mistake is named even where the task data is missing
        folder = task_data_folder(expand_data_path(value["task_data"], "tasks.task_data") if "task_data" in value else None)
        check_task_data(resolved, folder)
    except GainCellError as error:
        raise GainCellError(f"tasks.task_data: {error}") from None
    table["task_data"] = str(folder)
    return table


def main_metric(task: str, metrics: dict) -> float | None:
    """The number a task's column shows (see :data:`MAIN_METRICS`; else its accuracy)."""
    return metrics.get(MAIN_METRICS.get(task, "acc,none"))


def score_tasks(model, tokenizer, tasks: dict) -> dict:
    """Run the tasks on ``model``: per task its main metric, and the items and seconds it took."""
    from gaincell.evaluation.harness import plan_tasks, run_tasks

    plan = plan_tasks(tasks["names"], task_data=tasks["task_data"])
    sizes = {"batch_size": tasks["batch_size"], "max_length": tasks.get("max_length")}
    table = run_tasks(model, tokenizer, plan, limit=tasks["limit"], **sizes)
    scores = {task: main_metric(task, metrics) for task, metrics in table["tasks"].items()}
    return {"scores": scores, "samples": table["samples"], "seconds": sum(table["seconds"].values())}
