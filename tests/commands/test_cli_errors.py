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
