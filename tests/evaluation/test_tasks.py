"""The paper's Table 1 offline (gaincell.evaluation.tasks, .harness; `gaincell eval --tasks`).

The task files come from the shared data folder (``shared_data``: ``$GAINCELL_DATA``, else
``../shared/data``); without it these tests skip and say how to point at it.
"""

import json
import re

import pytest

import gaincell
from gaincell.cli import main
from gaincell.errors import GainCellError
from gaincell.evaluation import harness, tasks
from gaincell.evaluation.lm_eval_model import lm_eval_model_class

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.needs_data("tasks")]


@pytest.fixture(scope="module")
def task_data(shared_data):
    return (shared_data / "tasks").resolve()  # as gaincell names it (a symlinked shared folder reads the same)


@pytest.fixture(scope="module")
def definitions(task_data, tmp_path_factory):
    """The generated YAMLs of every local task, in one folder."""
    folder = tmp_path_factory.mktemp("tasks")
    tasks.write_task_definitions(tasks.LOCAL_TASKS, task_data, folder)
    return folder


@pytest.fixture(scope="module")
def manager(definitions):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(definitions), include_defaults=False)


@pytest.fixture(scope="module")
def tiny_model(tiny_gpt2, tokenizer):
    """``tiny_model()``: conftest's tiny GPT-2 over the session tokenizer, long enough for the task prompts."""
    return lambda: tiny_gpt2(vocab_size=len(tokenizer), n_positions=96).eval()


# -- task definitions -----------------------------------------------------------------------------


def test_names_and_groups_resolve_in_order_each_once():
    assert tasks.resolve_tasks("paper") == list(tasks.PAPER_TASKS)
    assert tasks.resolve_tasks("table1") == [*tasks.PAPER_TASKS, "wikitext"]
    assert tasks.resolve_tasks("piqa, arc_easy,paper") == ["piqa", "arc_easy", *tasks.PAPER_TASKS[1:4], "lambada_openai"]
    assert tasks.resolve_tasks(["mine", "wikitext"], extra=["mine"]) == ["mine", "wikitext"]
    with pytest.raises(GainCellError, match="unknown task 'nosuchtask'; known: groups paper, table1"):
        tasks.resolve_tasks("arc_easy,nosuchtask")


def test_a_generated_definition_includes_lm_evals_file_and_overrides_only_the_data(task_data, definitions):
    import yaml

    written = yaml.safe_load((definitions / "hellaswag.yaml").read_text())
    assert written == {
        "include": str(tasks.stock_task_file("hellaswag")),
        "task": "hellaswag",
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"validation": str(task_data / "hellaswag" / "hellaswag_val.jsonl")}},
        "training_split": None,
        "validation_split": "validation",
        "test_split": None,
    }
    assert tasks.stock_task_file("hellaswag").parts[-4:] == ("lm_eval", "tasks", "hellaswag", "hellaswag.yaml")
    arc = yaml.safe_load((definitions / "arc_challenge.yaml").read_text())
    assert (arc["test_split"], arc["training_split"], arc["validation_split"]) == ("test", None, None)
    wikitext = yaml.safe_load((definitions / "wikitext.yaml").read_text())
    assert wikitext["dataset_kwargs"]["data_files"] == {"test": str(definitions / tasks.WIKITEXT_DOCUMENTS)}


def test_lm_eval_builds_every_task_from_the_local_files(manager, task_data):
    loaded = manager.load(list(tasks.LOCAL_TASKS))["tasks"]
    files = {name: task_data / task.data for name, task in tasks.LOCAL_TASKS.items() if name != "wikitext"}
    rows = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in files.items()}
    assert {name: len(task.eval_docs) for name, task in loaded.items()} == {**rows, "wikitext": 62}
    assert rows == {
        "arc_easy": 2376,
        "arc_challenge": 1172,
        "winogrande": 1267,
        "hellaswag": 10042,
        "lambada_openai": 5153,
        "piqa": 1838,
    }


def test_wikitext_2_test_splits_into_lm_evals_62_documents(task_data):
    documents = tasks.wikitext_documents((task_data / "wikitext" / "wiki.test.raw").read_text(encoding="utf-8"))
    titles = [document.split("\n", 1)[0].strip() for document in documents]
    assert len(documents) == 62  # EleutherAI/wikitext_document_level, wikitext-2-raw-v1, test
    assert titles[0] == "= Robert Boulter =" and titles[-1] == "= The Hustler ( film ) ="
    assert all(re.fullmatch(r"= [^=].* =", title) for title in titles)
    assert sum(document.count("\n = = ") for document in documents) > 500  # sections stay inside their article
    assert "\r" not in "".join(documents)


# -- prompt equality ------------------------------------------------------------------------------


def _rows(task_data, name: str) -> list[dict]:
    path = task_data / tasks.LOCAL_TASKS[name].data
    if name == "wikitext":
        return [{"page": page} for page in tasks.wikitext_documents(path.read_text(encoding="utf-8"))]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


#: Rows that exercise each task's special cases (numeric ARC labels, wikihow tags, LAMBADA targets that are not a bare word).
SPECIAL = {
    "arc_easy": lambda row: row["choices"]["label"][0].isdigit(),
    "arc_challenge": lambda row: row["choices"]["label"][0].isdigit(),
    "hellaswag": lambda row: row["source_id"].startswith("wikihow") and "[" in row["ctx"],
    "lambada_openai": lambda row: not row["text"].split(" ")[-1].isalpha(),
}


def _indices(name: str, rows: list[dict]) -> list[int]:
    special = [i for i, row in enumerate(rows) if SPECIAL.get(name, lambda row: False)(row)][:2]
    return sorted({0, 1, 2, len(rows) // 2, len(rows) - 1, *special})


def _stock_task(name: str, rows: list[dict]):
    """lm-eval's own ``ConfigurableTask`` from its installed YAML, read by lm-eval's own loader
    (includes and ``!function`` helpers resolved), handed ``rows`` instead of downloading its dataset."""
    from datasets import Dataset, DatasetDict
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(tasks.stock_task_file(name), resolve_func=True)
    for key in ("tag", "group", "task_list"):
        config.pop(key, None)
    splits = {config.get(key) for key in ("training_split", "validation_split", "test_split", "fewshot_split")} - {None}

    class StockTask(ConfigurableTask):
        def download(self, dataset_kwargs=None, **kwargs):
            self.dataset = DatasetDict({split: Dataset.from_list(rows) for split in splits})

    return StockTask(config=config)


def _requests(task, samples: list[int]) -> list[tuple]:
    """(requests, gold, choices) of each doc in ``samples`` (sorted); lm-eval numbers the picked docs 0, 1, ..."""
    task.build_all_requests(samples=samples)
    docs = [task.eval_docs[i] for i in samples]
    requests = [[(i.request_type, i.arguments) for i in task.instances if i.doc_id == k] for k in range(len(samples))]
    golds = [task.doc_to_target(doc) for doc in docs]
    choices = [task.doc_to_choice(doc) if task.config.doc_to_choice is not None else None for doc in docs]
    return list(zip(requests, golds, choices, strict=True))


@pytest.mark.parametrize("name", list(tasks.LOCAL_TASKS))
def test_prompts_equal_lm_evals_own_task_on_the_same_rows(name, task_data, manager):
    """Our generated task (lm-eval's ``TaskManager`` reading the file through ``datasets``' json
    builder) and lm-eval's stock task (its ``ConfigurableTask`` built from its installed YAML, its
    dataset replaced by the same rows read with ``json.loads``, since its download needs the hub)
    build the same requests (context and continuation strings), gold and choices for 5 to 7 rows
    per task: the first three, the middle, the last, and rows of each task's special cases.

    Feeding the stock task the docs through its own ``ConfigurableTask`` runs its own
    ``process_docs``, ``doc_to_text``/``doc_to_choice``/``doc_to_target`` and request
    construction, so nothing of lm-eval is re-implemented in the comparison."""
    rows = _rows(task_data, name)
    indices = _indices(name, rows)
    ours = _requests(manager.load([name])["tasks"][name], indices)
    stock = _requests(_stock_task(name, [rows[i] for i in indices]), list(range(len(indices))))
    assert ours == stock
    assert len(indices) >= 5 and all(requests for requests, _, _ in ours)
    if name in SPECIAL:
        assert len(indices) >= 6


# -- batched = unbatched --------------------------------------------------------------------------


def _instances(manager, name: str, limit: int):
    task = manager.load([name])["tasks"][name]
    task.build_all_requests(limit=limit)
    return task.instances


@pytest.mark.parametrize("attention", ["original", "softmax", "paper"])
def test_batched_log_likelihoods_equal_batch_size_one(attention, manager, tokenizer, tiny_model):
    """lm-eval pads a batch on the right with no attention mask; the op is causal, so every score
    equals the unpadded one. The forwards are recorded to prove the batches held padding."""
    model = tiny_model()
    if attention != "original":
        model = gaincell.convert(model, attention, window=16, subtile_rows=8, block_size=16)
    shapes: list[tuple[int, int]] = []
    model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    requests = [*_instances(manager, "arc_easy", 4), *_instances(manager, "winogrande", 4)]
    rolling = _instances(manager, "wikitext", 1)
    scores = {}
    for batch_size in (1, 6):
        shapes.clear()
        adapter = lm_eval_model_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        scores[batch_size] = (adapter.loglikelihood(requests), adapter.loglikelihood_rolling(rolling))
        scores[batch_size, "tokens"] = sum(rows * length for rows, length in shapes)
        scores[batch_size, "rows"] = max(rows for rows, _ in shapes)
    assert scores[6, "rows"] == 6 and scores[1, "rows"] == 1
    assert scores[6, "tokens"] > scores[1, "tokens"]  # the same requests, so the difference is padding
    (one, one_rolling), (six, six_rolling) = scores[1], scores[6]
    assert [greedy for _, greedy in six] == [greedy for _, greedy in one]
    assert [score for score, _ in six] == pytest.approx([score for score, _ in one], rel=1e-5, abs=1e-4)
    assert six_rolling == pytest.approx(one_rolling, rel=1e-6)


# -- the command ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tokenizer, tiny_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("model") / "tiny"
    gaincell.save(gaincell.convert(tiny_model(), "paper", window=16, subtile_rows=8), directory, tokenizer)
    return directory


def test_cli_runs_tasks_from_the_local_files_and_states_the_limit(model_dir, task_data, tmp_path, capsys):
    output = tmp_path / "out" / "table1.json"
    argv = ["eval", str(model_dir), "--tasks", "arc_challenge,wikitext", "--task-data", str(task_data)]
    assert main([*argv, "--limit", "3", "--batch-size", "4", "--output", str(output)]) == 0
    printed = capsys.readouterr()
    assert "lm-eval tasks (--limit 3, batch size 4, 0-shot, max length 96)" in printed.out  # the model's positions
    assert re.search(r"gaincell eval: arc_challenge: 3 items in [\d.]+ s", printed.err)
    written = json.loads(output.read_text())
    assert (written["limit"], written["batch_size"], written["task_data"]) == (3, 4, str(task_data))
    assert written["samples"] == {"arc_challenge": 3, "wikitext": 3}
    assert 0 <= written["tasks"]["arc_challenge"]["acc,none"] <= 1
    assert set(written["tasks"]["wikitext"]) == {"word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"}
    assert written["seconds"]["wikitext"] > 0
    shorter = tmp_path / "short.json"
    wikitext = ["eval", str(model_dir), "--tasks", "wikitext", "--task-data", str(task_data)]
    assert main([*wikitext, "--limit", "3", "--max-length", "32", "--output", str(shorter)]) == 0
    short = json.loads(shorter.read_text())
    assert short["max_length"] == 32 and short["tasks"]["wikitext"] != written["tasks"]["wikitext"]  # more, shorter windows


def _fails_with_one_line(argv: list[str], tmp_path, capsys) -> str:
    before = [path for path in sorted(tmp_path.rglob("*")) if not path.name.endswith(".gaincell.lock")]
    assert main([*argv, "--output", str(tmp_path / "out.json"), "--limit", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gaincell eval: error: ")
    written = [path for path in sorted(tmp_path.rglob("*")) if not path.name.endswith(".gaincell.lock")]
    assert written == before  # nothing written (the empty lock file --output takes stays: docs/robustness.md)
    return lines[0]


def test_cli_unknown_task_is_one_line_exit_2_nothing_written(model_dir, tmp_path, capsys):
    line = _fails_with_one_line(["eval", str(model_dir), "--tasks", "arc_easy,nosuchtask"], tmp_path, capsys)
    assert "unknown task 'nosuchtask'" in line and "paper" in line


def test_cli_missing_or_incomplete_task_data_is_one_line_exit_2_nothing_written(
    model_dir, task_data, tmp_path, capsys, monkeypatch
):
    missing = tmp_path / "nowhere"
    line = _fails_with_one_line(["eval", str(model_dir), "--tasks", "paper", "--task-data", str(missing)], tmp_path, capsys)
    assert f"no such folder {missing}" in line and "--task-data DIR" in line and "GAINCELL_DATA" in line

    monkeypatch.setenv("GAINCELL_DATA", str(tmp_path))  # a data folder without tasks/: the hub, which is off here
    line = _fails_with_one_line(["eval", str(model_dir), "--tasks", "piqa"], tmp_path, capsys)
    assert "cannot download piqa" in line and "with internet" in line and "--task-data DIR" in line

    (tmp_path / "tasks" / "arc_easy").mkdir(parents=True)
    (tmp_path / "tasks" / "arc_easy" / "test.jsonl").symlink_to(task_data / "arc_easy" / "test.jsonl")
    line = _fails_with_one_line(["eval", str(model_dir), "--tasks", "table1"], tmp_path, capsys)
    assert f"{tmp_path / 'tasks'} lacks arc_challenge/test.jsonl (task arc_challenge)" in line


def test_plan_checks_an_include_path_and_its_task_names(tmp_path):
    import yaml

    definition = {**tasks.task_definition("piqa", tmp_path / "x.jsonl"), "task": "mine"}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(definition))
    plan = harness.plan_tasks("mine", include_path=tmp_path)
    assert plan.names == ("mine",) and plan.task_data is None and plan.local == ()
    with pytest.raises(GainCellError, match="include_path: no such directory"):
        harness.plan_tasks("paper", include_path=tmp_path / "missing")
