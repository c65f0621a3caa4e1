"""README.md and docs/ name only things that exist: files, folders, modules and `gaincell` commands.

A renamed module or a removed script leaves a stale pointer that no other test sees; a newcomer
following the README then finds nothing.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gaincell.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "gaincell"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Paths made by running something (outputs), not parts of the repository.
OUTPUTS = ("gaincell-demo/", "runs/", "stories-gaincell", "gpt2-gaincell", ".device-carry/")  # folders commands write


def _code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def _exists(name: str) -> bool:
    if name.startswith("../shared/"):
        return True  # the shared folder beside the checkout, read through gaincell.datadir
    candidates = [ROOT / name, PACKAGE / name, *PACKAGE.rglob(name)]
    return any(path.exists() for path in candidates)


def _is_path(span: str) -> bool:
    """A path in the repository: it has a folder in it, or it is a Python module (a bare ``report.md`` is
    usually a file a command writes)."""
    shaped = re.fullmatch(r"[\w./-]+(\.(py|md|toml|json|png|txt|jsonl)|/)", span)
    return bool(shaped) and ("/" in span or span.endswith(".py")) and not span.startswith(OUTPUTS)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_path_a_page_names_exists(page):
    missing = [span for span in _code_spans(page.read_text()) if _is_path(span) and not _exists(span)]
    assert not missing, f"{page.relative_to(ROOT)} names {missing}"


def test_no_page_counts_a_git_ignored_path_as_part_of_the_repository():
    """A path that exists here only because git ignores it (an output made on this machine) is missing from a
    fresh clone, where the test above then fails (issue 26: `.device-carry/` in docs/benchmarks.md)."""
    named = {span for page in PAGES for span in _code_spans(page.read_text()) if _is_path(span)}
    found = sorted(span for span in named if (ROOT / span).exists())
    assert found  # the pages do name repository paths
    ignored = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--stdin"],
        input="\n".join(found),
        capture_output=True,
        text=True,
        check=False,
    )
    assert ignored.returncode in (0, 1), ignored.stderr  # 1: none ignored; 128: not a git checkout
    assert not ignored.stdout.split(), f"pages name git-ignored paths as if in the repository: {ignored.stdout.split()}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_a_page_makes_exists(page):
    links = re.findall(r"\]\(([^)#\s]+)\)", page.read_text())
    missing = [link for link in links if not link.startswith("http") and not (page.parent / link).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to {missing}"


def _commands(text: str) -> set[str]:
    """``gaincell X`` where a reader would type it: in a code span or at the start of a code-block line."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    typed = [line.strip() for block in blocks for line in block.splitlines()] + _code_spans(text)
    return {match.group(1) for line in typed if (match := re.match(r"gaincell (\w+)", line))}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_gaincell_command_a_page_runs_exists(page):
    unknown = _commands(page.read_text()) - set(COMMANDS)
    assert not unknown, f"{page.relative_to(ROOT)} runs gaincell {sorted(unknown)}"


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_the_command_finder_sees_the_readme_commands():
    assert {"demo", "adapt", "eval", "generate", "hw", "sweep"} <= _commands((ROOT / "README.md").read_text())


# -- every README command, run as a user with only the repository would run it ------------------------------

#: How each command of the README's code blocks is exercised here, quickly and without ../shared (the shared
#: data folder points at an empty one): extra arguments that shrink it, or the test that runs it instead.
QUICK = {
    "gaincell demo": "tests/demo/test_demo.py",  # the whole experiment at toy size, no data needed
    "gaincell convert gaincell-demo/pretrained runs/converted --window 64": [],
    "gaincell eval runs/converted --text docs/spec.md": ["--max-tokens", "128"],
    'gaincell generate gaincell-demo/model --prompt "The function"': ["--max-new-tokens", "4"],
    "gaincell adapt examples/adapt-demo.toml": [
        "--set",
        "linear.max_steps=2",
        "--set",
        "linear.warmup_steps=1",
        "--set",
        "nonlinear.max_steps=2",
        "--set",
        "nonlinear.warmup_steps=1",
        "--set",
        "calibration.max_iterations=2",
        "--set",
        "linear.progress_bar=false",
        "--set",
        "nonlinear.progress_bar=false",
    ],  # fmt: skip
    "gaincell sweep examples/sweep-demo.toml": ["--set", "grid.adc_levels=[8]", "--set", "max_tokens=256", "--no-progress"],
    "gaincell hw --model gpt2 --window 1024": [],
    "gaincell selfcheck": ["--length", "40", "--window", "16"],
    "gaincell fetch": "tests/test_fetch.py",  # the registry download, with the network replaced
    "accelerate launch --quiet -m gaincell.cli adapt examples/adapt.toml": "offline: one line naming the model",
}


def _readme_commands() -> list[str]:
    """The commands a reader types from the README's bash blocks after installing (not the install lines)."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.split("  #")[0] for block in blocks for line in block.splitlines() if not line.startswith("#")]
    steps = [step.strip() for line in lines for step in line.split("&&")]
    return [step for step in steps if step.startswith(("gaincell ", "accelerate "))]


def _readme_snippet() -> str:
    return re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S).group(1)


def test_every_readme_command_has_a_quick_variant_here():
    commands = _readme_commands()
    assert "gaincell demo" in commands and len(commands) >= 9
    assert sorted(set(commands)) == sorted(QUICK), "a README command is not exercised by test_docs.py"


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory, tiny_gpt2, tokenizer):
    """What a user has after ``gaincell demo --quick`` in a clone: the repository's docs and examples and the demo's
    two models (tiny ones here, with the quick demo's context), and no shared data folder."""
    import gaincell

    root = tmp_path_factory.mktemp("clone")
    for name in ("docs", "examples"):
        (root / name).symlink_to(ROOT / name)
    pretrained = tiny_gpt2(vocab_size=len(tokenizer), n_positions=128)
    gaincell.save(pretrained, root / "gaincell-demo" / "pretrained", tokenizer)
    adapted = gaincell.convert(tiny_gpt2(vocab_size=len(tokenizer), n_positions=128), "paper", window=64)
    gaincell.save(adapted, root / "gaincell-demo" / "model", tokenizer)
    (root / "empty-data").mkdir()
    return root


@pytest.fixture
def as_a_new_user(fresh_clone, monkeypatch):
    monkeypatch.chdir(fresh_clone)
    monkeypatch.setenv("GAINCELL_DATA", str(fresh_clone / "empty-data"))
    return fresh_clone


def _argv(command: str) -> list[str]:
    import shlex

    return shlex.split(command)[1:]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("command", [command for command, how in QUICK.items() if isinstance(how, list)])
def test_a_readme_command_runs_without_shared_data(command, as_a_new_user, capsys):
    from gaincell.cli import main

    assert main([*_argv(command), *QUICK[command]]) == 0, capsys.readouterr().err[-2000:]


def test_the_commands_run_elsewhere_are_run_there():
    for command, how in QUICK.items():
        if isinstance(how, str) and how.startswith("tests/"):
            assert f'"{_argv(command)[0]}"' in (ROOT / how).read_text(), f"{how} does not run {command}"


@pytest.mark.usefixtures("one_thread")
def test_the_readme_snippet_runs_on_the_demos_model(as_a_new_user, capsys):
    exec(compile(_readme_snippet(), "README.md", "exec"), {})
    assert capsys.readouterr().out.startswith("The function")
    assert (as_a_new_user / "runs" / "snippet-gaincell" / "config.json").is_file()


def test_the_many_gpu_line_offline_is_one_line_naming_the_model(as_a_new_user, capsys):
    """``accelerate launch`` runs the same ``main``; offline (as every test is), GPT-2 cannot be fetched."""
    from gaincell.cli import main

    command = "accelerate launch --quiet -m gaincell.cli adapt examples/adapt.toml"
    assert command in QUICK
    argv = _argv(command)
    assert main(argv[argv.index("gaincell.cli") + 1 :]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("gaincell adapt: error:") and "gpt2" in err[0]


def test_the_many_gpu_line_under_accelerate_launch_ends_at_gaincells_line(as_a_new_user, tmp_path):
    """accelerate's launcher raises ``CalledProcessError`` when its child fails, a traceback under gaincell's one
    line, unless ``--quiet``: the README's line, run (one CPU process, no accelerate config read, no hub cache)."""
    command = "accelerate launch --quiet -m gaincell.cli adapt examples/adapt.toml"
    assert command in QUICK
    argv = _argv(command)
    module = argv.index("-m")
    one_cpu_process = ["--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no"]
    launch = [str(Path(sys.executable).with_name("accelerate")), *argv[:module], *one_cpu_process, *argv[module:]]
    env = {
        **os.environ, "PYTHONPATH": str(PACKAGE.parent), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    run = subprocess.run(launch, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("gaincell adapt: error:")]
    assert len(errors) == 1 and "gpt2" in errors[0], run.stderr[-2000:]
