"""User errors on the command line: `gaincell eval`, `generate` and `adapt` answer each with exit code 2
and one line on stderr (no traceback), and a failed `adapt` leaves no output directory behind."""

import json
import re
from pathlib import Path

import pytest

import gaincell
from gaincell.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

STAGE = {"max_steps": 2, "warmup_steps": 1, "batch_size": 4, "grad_accum": 1, "progress_bar": False, "mixed_precision": "no"}


@pytest.fixture(scope="module")
def files(pydoc_text, tokenizer, tiny_gpt2, tmp_path_factory) -> dict[str, Path]:
    """A saved tiny gain-cell model (with and without its tokenizer, and with truncated weights) and corpora."""
    root = tmp_path_factory.mktemp("cli-errors")
    text = pydoc_text[:20_000]
    model = gaincell.convert(tiny_gpt2(), "paper", window=16, subtile_rows=8)
    gaincell.save(model, root / "model", tokenizer)
    gaincell.save(model, root / "untokenized")
    gaincell.save(model, root / "corrupt", tokenizer)
    weights = root / "corrupt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (root / "corpus.txt").write_text(text)
    (root / "empty.txt").write_text("")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 4)
    return {path.stem: path for path in root.iterdir()}


def fail(argv: list[str], capsys) -> str:
    """Run ``gaincell ARGV``; it must exit with 2 and end stderr with one error line; returns that line."""
    assert main([str(arg) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]  # progress bars may come before it
    assert [line for line in lines if line.startswith(f"gaincell {argv[0]}: ")] == lines[-1:]
    return lines[-1]


# -- gaincell eval --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{missing}", "--text", "{corpus}"], "MODEL_DIR: no such directory"),
        (["{corpus}", "--text", "{corpus}"], "MODEL_DIR: no such directory"),
        (["{model}", "--text", "{missing}"], "text: no such file or folder"),
        (["{model}", "--text", "{empty}"], "is an empty corpus"),
        (["{model}", "--text", "{binary}"], "cannot read .*binary.txt: UnicodeDecodeError"),
        (["{corrupt}", "--text", "{corpus}"], "MODEL_DIR: cannot load a model from .*corrupt"),
        (["{untokenized}", "--text", "{corpus}"], "MODEL_DIR: .*untokenized has no tokenizer"),
        (["{model}", "--text", "{corpus}", "--context", "64"], "context of 64 tokens is longer than the model's 32"),
        (
            ["{model}", "--text", "{corpus}", "--device", "abacus"],
            "--device must be auto, cpu, cuda or cuda:N, got 'abacus'",
        ),
        (["{model}", "--text", "{corpus}", "--dtype", "int8"], "--dtype must be one of float32, bfloat16, .*got 'int8'"),
        (["{model}"], "give --text FILE"),
    ],
)
def test_eval_errors(files, argv, message, capsys):
    line = fail(["eval", *[arg.format(**files, missing=files["model"].parent / "missing") for arg in argv]], capsys)
    assert line.startswith("gaincell eval: error: ")
    assert re.search(message, line), line


# -- gaincell generate ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{missing}", "--prompt", "hello"], "MODEL_DIR: .*missing is not a directory"),
        (["{untokenized}", "--prompt", "hello"], "MODEL_DIR: .*untokenized has no tokenizer"),
        (["{corrupt}", "--prompt", "hello"], "MODEL_DIR: cannot load a model from .*corrupt"),
        (["{model}", "--prompt", ""], "--prompt is empty"),
        (["{model}", "--prompt", "  \n"], "--prompt is empty"),
        (["{model}", "--prompt", "To be or not to be " * 10], r"--prompt: \d+ tokens do not fit the model's 32 positions"),
        (["{model}", "--prompt", "hello", "--max-new-tokens", "40"], r"--max-new-tokens: the prompt's \d+ tokens \+ 40"),
        (["{model}", "--prompt", "hello", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["{model}", "--prompt", "hello", "--temperature", "0"], "--temperature must be a number > 0"),
        (["{model}", "--prompt", "hello", "--temperature", "nan"], "--temperature must be a number > 0"),
        (["{model}", "--prompt", "hello", "--top-k", "-1"], "--top-k must be >= 0"),
        (["{model}", "--prompt", "hello", "--device", "abacus"], "--device must be auto, cpu, cuda or cuda:N, got 'abacus'"),
        (["{model}", "--prompt", "hello", "--dtype", "double"], "--dtype must be one of float32, .*got 'double'"),
    ],
)
def test_generate_errors(files, argv, message, capsys):
    line = fail(["generate", *[arg.format(**files, missing=files["model"].parent / "missing") for arg in argv]], capsys)
    assert line.startswith("gaincell generate: error: ")
    assert re.search(message, line), line


# -- gaincell adapt -------------------------------------------------------------------------------


def write_recipe(path: Path, files: dict[str, Path], changes: dict) -> Path:
    """A three-stage recipe that runs in a second (see the first test) but for ``changes``, as TOML."""
    recipe = {
        "model": str(files["model"]),
        "output_dir": str(path.parent / "run"),
        "data": {"text": str(files["corpus"]), "block_size": 32, "eval_blocks": 4},
        "hardware": {"preset": "paper", "window": 16, "subtile_rows": 8},
        "linear": STAGE,
        "calibration": {"max_iterations": 2, "batch_size": 4},
        "nonlinear": STAGE,
        **changes,
    }
    lines = [f"{key} = {json.dumps(value)}" for key, value in recipe.items() if not isinstance(value, dict)]
    for section, table in recipe.items():
        if isinstance(table, dict):
            lines += [f"[{section}]", *(f"{key} = {json.dumps(value)}" for key, value in table.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_recipe_the_adapt_errors_change_runs(files, tmp_path, capsys):
    assert main(["adapt", str(write_recipe(tmp_path / "recipe.toml", files, {}))]) == 0
    assert (tmp_path / "run" / "nonlinear" / "model").is_dir() and (tmp_path / "run" / "summary.json").is_file()


DATA = {"block_size": 32, "eval_blocks": 4}


@pytest.mark.parametrize(
    ("changes", "options", "message"),
    [
        (None, [], "CONFIG: no such file"),
        ({"model": "{missing}"}, [], "model: no such directory .*missing"),
        ({"model": "{corpus}"}, [], "model: .*corpus.txt is not a directory"),
        ({"model": "{corrupt}"}, [], "MODEL_DIR: cannot load a model from .*corrupt"),
        ({"model": "{untokenized}"}, [], "MODEL_DIR: .*untokenized has no tokenizer"),
        ({}, ["--set", "hardware.preset=nope"], "hardware.preset must be one of .*got 'nope'"),
        ({"hardware": {"preset": "nope"}}, [], "hardware.preset must be one of .*got 'nope'"),
        ({}, ["--set", "hardware.periphery.s_sat=0"], r"hardware\.periphery\.s_sat must be a finite number > 0, got 0$"),
        ({"linear": {**STAGE, "max_steps": 0}}, [], r"linear\.max_steps must be an integer >= 1, got 0$"),
        ({"linear": {**STAGE, "stepz": 1}}, [], r"linear: unknown key 'stepz' \(expected one of: batch_size, "),
        ({"data": {"text": "{empty}", **DATA}}, [], "text: .*empty.txt is an empty corpus"),
        ({"data": {"text": "{missing}", **DATA}}, [], "text: no such file or folder"),
        ({"data": {"text": "{binary}", **DATA}}, [], "cannot read .*binary.txt: UnicodeDecodeError"),
        ({}, ["--set", "data.block_size=64"], "context of 64 tokens is longer than the model's 32 positions"),
        ({}, ["--set", "nonlinear.batch_size=5000"], r"nonlinear.batch_size: the corpus gives \d+ training blocks"),
        ({}, ["--output-dir", "{corpus}"], "output_dir: .*corpus.txt exists and is not a directory"),
        ({}, ["--set", "hardware.cell.coefficients=[[0, 0, nan]]"], r"hardware\.cell\.coefficients must be .*finite"),
        (
            {},
            ["--set", "hardware.periphery.adc.levels=1"],
            r"hardware\.periphery\.adc\.levels must be an integer >= 2, got 1$",
        ),
        ({}, ["--set", "data.text=5"], r"data\.text must be a non-empty string, got 5$"),
    ],
)
def test_adapt_errors_leave_no_output_behind(files, tmp_path, changes, options, message, capsys):
    names = {**{name: str(path) for name, path in files.items()}, "missing": str(tmp_path / "missing")}

    def fill(value):
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        return value.format(**names) if isinstance(value, str) else value

    config = tmp_path / "missing.toml" if changes is None else write_recipe(tmp_path / "recipe.toml", files, fill(changes))
    line = fail(["adapt", config, *[fill(option) for option in options]], capsys)
    assert line.startswith("gaincell adapt: error: ")
    assert re.search(message, line), line
    assert [path.name for path in tmp_path.iterdir()] == ([] if changes is None else ["recipe.toml"])  # no run, no temp
    assert files["corpus"].stat().st_size > 0  # --output-dir naming a file leaves it alone


# -- gaincell selfcheck, hw -------------------------------------------------------------------------


def test_selfcheck_refuses_a_shape_this_machine_cannot_hold(capsys):
    line = fail(["selfcheck", "--length", "100000000", "--heads", "64"], capsys)
    assert re.search(r"--length/--heads: T=100000000, H=64, D=64 need at least [\d,.]+ GB", line), line


def test_hw_plot_into_an_existing_file_is_refused(tmp_path, capsys):
    existing = tmp_path / "plots.png"
    existing.write_bytes(b"mine")
    line = fail(["hw", "--plot", existing], capsys)
    assert "--plot must be a folder for the PNG files (new or existing), got" in line
    assert existing.read_bytes() == b"mine"


def test_eval_help_says_include_path_runs_code():
    from gaincell.cli import build_parser

    help_text = " ".join(build_parser("eval")._subparsers._group_actions[0].choices["eval"].format_help().split())
    assert "imports and runs the Python files they name (!function)" in help_text


# -- issue 25: each case one line, exit 2, before the model loads -----------------------------------


@pytest.fixture(scope="module")
def task_folders(shared_data, tmp_path_factory) -> dict[str, Path]:
    """Task-data folders whose arc_easy or wikitext file is empty, truncated, not UTF-8 or lacks lm-eval's columns."""
    root = tmp_path_factory.mktemp("task-data")
    good = "".join((shared_data / "tasks" / "arc_easy" / "test.jsonl").read_text().splitlines(True)[:4])
    contents = {
        "empty": ("arc_easy/test.jsonl", b""),
        "truncated": ("arc_easy/test.jsonl", good[: len(good) // 2 + 7].encode()),
        "binary": ("arc_easy/test.jsonl", bytes(range(256)) * 4),
        "columnless": ("arc_easy/test.jsonl", b'{"foo": 1}\n'),
        "listline": ("arc_easy/test.jsonl", b"[1, 2]\n"),
        "good": ("arc_easy/test.jsonl", good.encode()),
        "wiki_binary": ("wikitext/wiki.test.raw", b"\xff\xfe = T = \n"),
        "wiki_empty": ("wikitext/wiki.test.raw", b"\n \n"),
    }
    for name, (file, content) in contents.items():
        (root / name / file).parent.mkdir(parents=True)
        (root / name / file).write_bytes(content)
    return {name: root / name for name in contents}


ARC = ["--tasks", "arc_easy", "--limit", "2", "--task-data"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*ARC, "{empty}"], r"task data: .*arc_easy/test.jsonl \(task arc_easy\) is empty$"),
        ([*ARC, "{truncated}"], r"line 2 is not JSON \(Unterminated string .*a truncated or damaged file\?\)$"),
        ([*ARC, "{binary}"], r"arc_easy/test.jsonl \(task arc_easy\) is not UTF-8 text \(byte 128: 0x80\)$"),
        ([*ARC, "{columnless}"], r"line 1 lacks the columns question, choices, answerKey"),
        ([*ARC, "{listline}"], r"line 1 is a JSON list, not an object"),
        (["--tasks", "wikitext", "--task-data", "{wiki_binary}"], r"wiki.test.raw \(task wikitext\) is not UTF-8 text"),
        (["--tasks", "wikitext", "--task-data", "{wiki_empty}"], r"wiki.test.raw \(task wikitext\) is empty$"),
        (["--tasks", "arc_easy", "--task-data", "{good}", "--limit", "0"], r"--limit must be a number of items >= 1 or a"),
        (["--tasks", "arc_easy", "--task-data", "{good}", "--limit", "-1"], r"--limit must be .*got -1.0$"),
        (["--tasks", "arc_easy", "--task-data", "{good}", "--limit", "nan"], r"--limit must be .*got nan$"),
        (["--tasks", "arc_easy", "--task-data", "{good}", "--limit", "inf"], r"--limit must be .*got inf$"),
        ([*ARC, "{good}", "--batch-size", "-3"], r"--batch-size must be an integer >= 1, got -3$"),
        ([*ARC, "{good}", "--batch-size", "0"], r"--batch-size must be an integer >= 1, got 0$"),
        ([*ARC, "{good}", "--num-fewshot", "-1"], r"--num-fewshot must be an integer >= 0, got -1$"),
        (["--text", "{corpus}", "--output", "{folder}"], r"--output must be a file name .*not a folder, got '.*'$"),
        (["--text", "{corpus}", "--output", ""], r"--output must be a file name to write the results to, got ''$"),
        (["--text", "{corpus}", "--stride", "0"], r"--stride must be an integer >= 1, got 0$"),
        (["--text", "{corpus}", "--context", "1"], r"--context must be an integer >= 2, got 1$"),
        (["--text", "{corpus}", "--max-tokens", "0"], r"--max-tokens must be an integer >= 2, got 0$"),
        (["--text", "{corpus}", "--output", "."], r"--output must be a file name .*not a folder, got '.'$"),
    ],
)
def test_eval_issue25_cases(files, task_folders, argv, message, tmp_path, capsys):
    names = {**task_folders, "corpus": files["corpus"], "folder": tmp_path}
    line = fail(["eval", files["model"], *[arg.format(**names) for arg in argv]], capsys)
    assert re.search(message, line), line
    assert list(tmp_path.iterdir()) == []


def test_a_max_length_shorter_than_an_answer_is_named(files, task_folders, capsys):
    """lm-eval checks it with a bare assert once the requests are built; the adapter names it before scoring."""
    assert main(["eval", str(files["model"]), *ARC, str(task_folders["good"]), "--max-length", "2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"gaincell eval: error: --max-length must hold the longest answer to score, (\d+) tokens, got 2; "
                        r"use --max-length \d+ or more \(or leave it out: the model's positions\)", last), last  # fmt: skip


def test_a_missing_relative_model_folder_is_named_as_a_folder(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = fail(["eval", "runs/model", "--text", files["corpus"]], capsys)
    assert f"model: no such directory 'runs/model' ({tmp_path / 'runs' / 'model'} does not exist)" in line


def test_an_include_path_task_with_a_missing_file_names_the_file(files, tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    (tmp_path / "mytask.yaml").write_text(
        f"task: mytask\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {missing}\ntest_split: test\n"
        "output_type: loglikelihood\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\nmetric_list:\n  - metric: acc\n"
    )
    line = fail(["eval", files["model"], "--tasks", "mytask", "--include-path", tmp_path, "--limit", "1"], capsys)
    assert "file not found: " in line and str(missing) in line and "None" not in line


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--seed", "99999999999999999999999"], r"--seed must be an integer in \[0, 18446744073709551615\], got 9+$"),
        (["--seed", "-1"], r"--seed must be an integer in \[0, 18446744073709551615\], got -1$"),
        (["--device", "meta"], r"--device must be auto, cpu, cuda or cuda:N, got 'meta'"),
    ],
)
def test_generate_issue25_cases(files, options, message, capsys):
    line = fail(["generate", files["model"], "--prompt", "hello", "--max-new-tokens", "2", *options], capsys)
    assert re.search(message, line), line


def test_a_prompt_that_is_not_utf8_is_named(files, capsys):
    prompt = b"hello \xff\xfe".decode("utf-8", "surrogateescape")  # how Python hands such an argument over
    line = fail(["generate", files["model"], "--prompt", prompt, "--max-new-tokens", "2"], capsys)
    assert "--prompt must be UTF-8 text, got 'hello ... (byte 0xff at character 6 is not UTF-8)'" in line


def test_hw_measure_refuses_a_cache_the_device_cannot_hold(capsys):
    argv = ["hw", "--measure", "--measure-device", "cpu", "--window", "100000000", "--heads", "64"]
    line = fail(argv, capsys)
    # 2 (K and V) x B=64 x H=64 x M=1e8 x D=64 x 4 bytes, computed here from the shape
    assert f"need at least {2 * 64 * 64 * 100_000_000 * 64 * 4 / 1e9:,.1f} GB, more than this machine's" in line, line


def test_hw_plot_empty_is_refused(capsys):
    assert "--plot must be a folder for the PNG files (new or existing), got ''" in fail(["hw", "--plot", ""], capsys)


@pytest.mark.parametrize("raised", ["OSError", "SafetensorError"])
def test_a_full_disk_is_one_line_and_leaves_no_output(files, tmp_path, monkeypatch, capsys, raised):
    """A weights writer that fails as a full disk does (ENOSPC): Python's OSError, or safetensors' own error type."""
    import errno

    import safetensors
    import safetensors.torch
    import transformers.modeling_utils

    def full(*args, **kwargs):
        if raised == "OSError":
            raise OSError(errno.ENOSPC, "No space left on device", "model.safetensors")
        raise safetensors.SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full, raising=False)
    line = fail(["convert", files["model"], tmp_path / "out", "--preset", "paper"], capsys)
    expected = {
        "OSError": "gaincell convert: error: No space left on device (model.safetensors)",
        "SafetensorError": "gaincell convert: error: writing or reading weights failed: Error while serializing: "
        'IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })',
    }
    assert line == expected[raised]
    assert list(tmp_path.iterdir()) == []  # no half-written model, no temporary folder


def test_adapt_on_a_full_disk_is_one_line_and_resumes_once_there_is_room(files, tmp_path, monkeypatch, capsys):
    import errno

    import safetensors.torch
    import transformers.modeling_utils

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "model.safetensors")

    recipe = write_recipe(tmp_path / "recipe.toml", files, {})
    with monkeypatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", full)
        patch.setattr(transformers.modeling_utils, "safe_save_file", full, raising=False)
        assert fail(["adapt", recipe], capsys) == "gaincell adapt: error: No space left on device (model.safetensors)"
    assert main(["adapt", str(recipe), "--resume"]) == 0
    assert (tmp_path / "run" / "nonlinear" / "model").is_dir()
