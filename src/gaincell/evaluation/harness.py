"""lm-eval tasks on an in-memory model, one task at a time and timed (SPEC §5, the paper's Table 1).

:func:`plan_tasks` checks the task names and finds the task data before any model is loaded, so a
typo or a missing folder costs a second, not a model load; :func:`run_tasks` then runs each task
through lm-eval's ``simple_evaluate`` with the gaincell model class
(:func:`gaincell.evaluation.lm_eval_model.lm_eval_model_class`), tasks of the task-data folder from
the YAMLs :mod:`gaincell.evaluation.tasks` generates.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from gaincell.adaptation.data import check_context
from gaincell.errors import GainCellError, first_line
from gaincell.evaluation.lm_eval_model import lm_eval_model_class
from gaincell.evaluation.tasks import (
    BOTH_WAYS,
    LOCAL_TASKS,
    check_hub_reachable,
    check_task_data,
    find_task_data,
    local_task_definitions,
    resolve_tasks,
)
from gaincell.validation import check_int


@dataclass(frozen=True)
class TaskPlan:
    """What :func:`run_tasks` will run: task names in order, where the paper's tasks read their data (a
    local folder; None: lm-eval's own download, see :attr:`hub`) and an extra folder of task YAMLs."""

    names: tuple[str, ...]
    task_data: Path | None = None
    include_path: Path | None = None

    @property
    def local(self) -> tuple[str, ...]:
        return tuple(name for name in self.names if name in LOCAL_TASKS)

    @property
    def hub(self) -> bool:
        """The paper's tasks come from lm-eval's download (no local task data chosen or found)."""
        return bool(self.local) and self.task_data is None


def plan_tasks(
    spec: str | Sequence[str], *, task_data: str | os.PathLike | None = None, include_path: str | os.PathLike | None = None
) -> TaskPlan:
    """Resolve ``spec`` (task and group names, comma-separated or a list) and check the task data;
    every mistake is one line naming the task or folder. ``include_path`` tasks are lm-eval YAMLs of
    one's own (a name defined there and here runs the definition there)."""
    extra: list[str] = []
    if include_path is not None:
        include_path = Path(include_path)
        if not include_path.is_dir():
            raise GainCellError(f"include_path: no such directory: {include_path}")
        from lm_eval.tasks import TaskManager

        extra = TaskManager(include_path=str(include_path), include_defaults=False).all_tasks
    names = tuple(resolve_tasks(spec, extra))
    local = [name for name in names if name in LOCAL_TASKS]
    folder = find_task_data(task_data) if local else None
    if folder is not None:
        check_task_data(local, folder)
    elif local:
        check_hub_reachable(local)
    return TaskPlan(names, folder, include_path)


def run_tasks(
    model,
    tokenizer,
    plan: TaskPlan | str | Sequence[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 1,
    max_length: int | None = None,
    on_task: Callable[[str, dict], None] | None = None,
) -> dict:
    """Run the plan's tasks on ``model`` and return the table: ``limit``, ``batch_size``,
    ``num_fewshot``, ``task_data`` and per task ``tasks`` (lm-eval's metrics, e.g. ``acc,none``),
    ``samples`` (items scored) and ``seconds`` (wall time of the task, data loading included).

    ``batch_size`` requests share a forward: lm-eval pads them on the right and passes no attention
    mask, which a causal op never attends to, so the scores equal batch size 1. ``on_task(name,
    row)`` is called as each task finishes (for printing its time). ``max_length`` caps a request's
    tokens (lm-eval truncates the context on the left; default and most: the model's positions).
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if not isinstance(plan, TaskPlan):
        plan = plan_tasks(plan)
    if max_length is not None:
        check_int("max_length", max_length, 2)
        check_context(model, max_length, "max_length")  # past its positions a model scores garbage, not an error
    sizes = {"batch_size": batch_size} | ({} if max_length is None else {"max_length": max_length})
    adapter = lm_eval_model_class()(pretrained=model, tokenizer=tokenizer, **sizes)
    task_data = "hub (lm-eval's own download)" if plan.hub else None if plan.task_data is None else str(plan.task_data)
    table: dict = {"limit": limit, "batch_size": batch_size, "num_fewshot": num_fewshot, "task_data": task_data,
                   "max_length": adapter.max_length}  # fmt: skip
    table |= {"tasks": {}, "samples": {}, "seconds": {}}
    generated = local_task_definitions(plan.local, plan.task_data) if plan.local and not plan.hub else nullcontext(None)
    with generated as folder:
        paths = [str(path) for path in (folder, plan.include_path) if path is not None]
        manager = TaskManager(include_path=paths or None, include_defaults=plan.hub)
        for name in plan.names:
            start = time.perf_counter()
            if plan.hub and name in LOCAL_TASKS:
                _download(manager, name)
            output = simple_evaluate(
                model=adapter, tasks=[name], task_manager=manager, limit=limit, num_fewshot=num_fewshot, log_samples=False
            )
            seconds = time.perf_counter() - start
            for task, metrics in output["results"].items():
                table["tasks"][task] = _numbers(metrics)
                table["samples"][task] = int(output["n-samples"][task]["effective"])
                table["seconds"][task] = seconds
            if on_task is not None:
                on_task(name, {key: table[key].get(name) for key in ("tasks", "samples", "seconds")})
    return table


def _download(manager, name: str) -> None:
    """Load task ``name`` through lm-eval (which downloads and caches its data), so that a failed download is
    one line naming both ways to get the data rather than a traceback from inside ``simple_evaluate``."""
    try:
        manager.load([name])
    except Exception as error:  # network, hub or dataset-script failures all mean: no data for this task
        raise GainCellError(f"task data: lm-eval could not download {name}: {first_line(error)}; {BOTH_WAYS}") from None


def _numbers(metrics: dict) -> dict[str, float]:
    """lm-eval's metrics and their standard errors (``acc,none``, ``acc_stderr,none``), without its labels."""
    return {
        metric: float(value)
        for metric, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and metric != "sample_len"
    }
