"""The paper's Table 1 offline (SPEC §5): lm-eval's own task definitions, reading local files.

lm-eval downloads each task's data from the Hugging Face hub; that stays the route with internet
(:func:`find_task_data` returns None). Offline, the task-data folder is read instead (``--task-data DIR``
or ``$GAINCELL_DATA/tasks``). For every task a generated YAML
``include:``s the installed harness file by its absolute path and overrides only where the data
comes from (``dataset_path: json``, ``data_files``, the splits), so the prompts, metrics and
``!function`` helpers are lm-eval's own. WikiText-2 is lm-eval's ``wikitext`` task on the raw test
split, cut into the documents that ``EleutherAI/wikitext_document_level`` serves (see
:func:`wikitext_documents`).

Names: the six tasks by lm-eval's names, ``wikitext``, and two groups: ``paper`` (the six
downstream tasks) and ``table1`` (``paper`` plus ``wikitext``, every column of Table 1).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gaincell.datadir import ENVIRONMENT_VARIABLE, data_dir
from gaincell.errors import GainCellError

#: The downstream tasks of the paper's Table 1, in its column order.
PAPER_TASKS = ("arc_easy", "arc_challenge", "winogrande", "hellaswag", "lambada_openai", "piqa")
GROUPS = {"paper": PAPER_TASKS, "table1": (*PAPER_TASKS, "wikitext")}
#: The metric each task's column shows: length-normalised accuracy where lm-eval offers it (the
#: paper's Table 1 choice for ARC, HellaSwag, PIQA), else accuracy; WikiText-2 its word perplexity.
MAIN_METRICS = {
    "arc_easy": "acc_norm,none", "arc_challenge": "acc_norm,none", "hellaswag": "acc_norm,none",
    "piqa": "acc_norm,none", "winogrande": "acc,none", "lambada_openai": "acc,none",
    "wikitext": "word_perplexity,none",
}  # fmt: skip
#: The task-config key naming each split.
SPLIT_KEYS = {"train": "training_split", "validation": "validation_split", "test": "test_split"}
WIKITEXT_DOCUMENTS = "wikitext-2-raw-test-documents.jsonl"
HOW_TO_POINT = (
    f"pass --task-data DIR (the folder holding arc_easy/, hellaswag/, ...) or set {ENVIRONMENT_VARIABLE} "
    "to the shared data folder (its tasks/ is read)"
)
#: Both ways to get task data, for the error a user without either meets.
BOTH_WAYS = (
    "with internet, leave out --task-data and unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE (lm-eval downloads each "
    f"task from the Hugging Face hub); offline, {HOW_TO_POINT}"
)
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass(frozen=True)
class LocalTask:
    """One lm-eval task read from the task-data folder.

    ``stock`` is lm-eval's own YAML (relative to ``lm_eval/tasks/``), ``split`` the split lm-eval
    scores, ``data`` the file under the task-data folder that holds it (JSON Lines, or raw text for
    WikiText) and ``columns`` the fields lm-eval's prompts read from every line.
    """

    name: str
    stock: str
    split: str
    data: str
    columns: tuple[str, ...] = ()


ARC = ("question", "choices", "answerKey")
LOCAL_TASKS = {
    task.name: task
    for task in (
        LocalTask("arc_easy", "arc/arc_easy.yaml", "test", "arc_easy/test.jsonl", ARC),
        LocalTask("arc_challenge", "arc/arc_challenge.yaml", "test", "arc_challenge/test.jsonl", ARC),
        LocalTask(
            "winogrande",
            "winogrande/default.yaml",
            "validation",
            "winogrande/dev.jsonl",
            ("sentence", "option1", "option2", "answer"),
        ),
        LocalTask(
            "hellaswag",
            "hellaswag/hellaswag.yaml",
            "validation",
            "hellaswag/hellaswag_val.jsonl",
            ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
        ),
        LocalTask("lambada_openai", "lambada/lambada_openai.yaml", "test", "lambada_openai/lambada_test.jsonl", ("text",)),
        LocalTask("piqa", "piqa/piqa.yaml", "validation", "piqa/validation.jsonl", ("goal", "sol1", "sol2", "label")),
        LocalTask("wikitext", "wikitext/wikitext.yaml", "test", "wikitext/wiki.test.raw"),
    )
}


def resolve_tasks(spec: str | Sequence[str], extra: Iterable[str] = ()) -> list[str]:
    """Task names from a comma list (or a list) of task and group names, groups expanded, in order,
    each once; ``extra`` are further known task names (those of an ``--include-path`` folder)."""
    requested = [name.strip() for name in (spec.split(",") if isinstance(spec, str) else spec) if name.strip()]
    if not requested:
        raise GainCellError("tasks: give at least one task, e.g. --tasks paper or --tasks arc_easy,piqa")
    extra = set(extra)
    names: list[str] = []
    for name in requested:
        if name not in GROUPS and name not in LOCAL_TASKS and name not in extra:
            raise GainCellError(
                f"tasks: unknown task {name!r}; known: groups {', '.join(GROUPS)}; tasks {', '.join(LOCAL_TASKS)}; "
                "or a task defined in a folder given with --include-path"
            )
        names += [task for task in GROUPS.get(name, (name,)) if task not in names]
    return names


def task_data_folder(folder: str | os.PathLike | None = None) -> Path:
    """The task-data folder: ``folder`` when given, else ``tasks/`` in the shared data folder."""
    if folder is not None:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise GainCellError(f"task data: no such folder {folder} (from --task-data); {HOW_TO_POINT}")
        return folder.resolve()
    shared = data_dir()
    if shared is None:
        raise GainCellError(f"task data: no shared data folder (${ENVIRONMENT_VARIABLE} or ../shared/data); {HOW_TO_POINT}")
    if not (shared / "tasks").is_dir():
        raise GainCellError(f"task data: no folder {shared / 'tasks'}; {HOW_TO_POINT}")
    return (shared / "tasks").resolve()


def find_task_data(folder: str | os.PathLike | None = None) -> Path | None:
    """The local task-data folder when one is chosen (``folder``) or found (``tasks/`` in the shared data
    folder); None means lm-eval's own download from the hub (a user with internet and no local copy)."""
    if folder is not None:
        return task_data_folder(folder)
    shared = data_dir()
    if shared is not None and (shared / "tasks").is_dir():
        return (shared / "tasks").resolve()
    return None


def check_hub_reachable(names: Sequence[str]) -> None:
    """Fail before the model loads when lm-eval would have to download ``names`` but the hub is switched off."""
    offline = [name for name in OFFLINE_VARIABLES if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")]
    if offline:
        raise GainCellError(
            f"task data: no local task data (no --task-data, no ${ENVIRONMENT_VARIABLE}/tasks) and {'/'.join(offline)} "
            f"is set, so lm-eval cannot download {', '.join(names)}; {BOTH_WAYS}"
        )


def check_task_data(names: Iterable[str], folder: Path) -> None:
    """Fail with one line naming the first local task whose file the folder lacks or cannot be read as the
    task's data (lm-eval would stop deep inside with ``StopIteration``, a dataset-builder error or
    ``'question' is undefined``, after the model loaded)."""
    for name in names:
        task = LOCAL_TASKS.get(name)
        if task is not None and not (folder / task.data).is_file():
            raise GainCellError(f"task data: {folder} lacks {task.data} (task {name}); {HOW_TO_POINT}")
        if task is not None:
            check_task_file(task, folder / task.data)


def check_task_file(task: LocalTask, path: Path) -> None:
    """``path`` holds ``task``'s data: UTF-8 text, not empty; for a JSON Lines task every line a JSON object
    with the task's columns (a truncated download ends in a broken line)."""
    where = f"task data: {path} (task {task.name})"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise GainCellError(f"{where} is not UTF-8 text (byte {error.start}: 0x{error.object[error.start]:02x})") from None
    if not text.strip():
        raise GainCellError(f"{where} is empty")
    if not task.columns:  # raw text (WikiText)
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise GainCellError(f"{where}: line {number} is not JSON ({error.msg}; a truncated or damaged file?)") from None
        if not isinstance(row, dict):
            raise GainCellError(f"{where}: line {number} is a JSON {type(row).__name__}, not an object with the columns "
                                f"{', '.join(task.columns)}")  # fmt: skip
        missing = [column for column in task.columns if column not in row]
        if missing:
            raise GainCellError(
                f"{where}: line {number} lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"(lm-eval's {task.name} reads {', '.join(task.columns)})"
            )


def stock_task_file(name: str) -> Path:
    """lm-eval's own installed YAML of task ``name``."""
    import lm_eval.tasks

    path = Path(lm_eval.tasks.__file__).resolve().parent / LOCAL_TASKS[name].stock
    if not path.is_file():
        raise GainCellError(f"lm-eval has no task file {path}: this lm-eval version lacks task {name!r}")
    return path


def task_definition(name: str, data_file: Path) -> dict:
    """The YAML of task ``name`` reading ``data_file``: lm-eval's own file plus where the data comes from.

    Every split but the scored one is null, so lm-eval looks for no train or validation file.
    """
    split = LOCAL_TASKS[name].split
    return {
        "include": str(stock_task_file(name)),
        "task": name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(Path(data_file).resolve())}},
        **{key: (split if key == SPLIT_KEYS[split] else None) for key in SPLIT_KEYS.values()},
    }


def wikitext_documents(raw: str) -> list[str]:
    """The documents of a raw WikiText file, as ``EleutherAI/wikitext_document_level`` (what lm-eval's
    ``wikitext`` task reads) cuts them: a new one at each top-level heading `` = Title = `` (after
    ``= = ...`` runs are joined, so ``= = Section = =`` stays inside), the lines joined with newlines.

    Line ends are taken as ``\\n`` (the shared copy has CRLF). That copy also lacks the blank lines of
    the original file, so a document has the same words but fewer bytes than the hub's.
    """
    documents: list[str] = []
    lines: list[str] = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        heading = line.replace("= = =", "===").replace("= =", "==").strip()
        if heading.startswith("= ") and heading.endswith(" ="):
            if "\n".join(lines).strip():
                documents.append("\n".join(lines))
            lines = []
        lines.append(line)
    documents.append("\n".join(lines))
    return documents


def write_task_definitions(names: Iterable[str], folder: Path, target: Path) -> list[Path]:
    """Write the YAML of each local task in ``names`` (and the WikiText documents) into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        if name not in LOCAL_TASKS:
            continue
        data_file = folder / LOCAL_TASKS[name].data
        if name == "wikitext":
            documents = wikitext_documents(data_file.read_text(encoding="utf-8"))
            data_file = target / WIKITEXT_DOCUMENTS
            data_file.write_text("".join(json.dumps({"page": page}) + "\n" for page in documents), encoding="utf-8")
        path = target / f"{name}.yaml"
        path.write_text(_yaml(task_definition(name, data_file)), encoding="utf-8")
        written.append(path)
    return written


def _yaml(definition: dict) -> str:
    import yaml

    header = "# Generated by gaincell.evaluation.tasks: lm-eval's own task, reading a local file.\n"
    return header + yaml.safe_dump(definition, sort_keys=False)


@contextmanager
def local_task_definitions(names: Iterable[str], folder: Path) -> Iterator[Path]:
    """A temporary folder holding the generated task YAMLs, for lm-eval's ``include_path``."""
    with tempfile.TemporaryDirectory(prefix="gaincell-tasks-") as target:
        write_task_definitions(names, folder, Path(target))
        yield Path(target)
