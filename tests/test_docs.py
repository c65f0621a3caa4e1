"""README.md and docs/ name only things that exist: files, folders, modules and `gaincell` commands.

A renamed module or a removed script leaves a stale pointer that no other test sees; a newcomer
following the README then finds nothing.
"""

import re
from pathlib import Path

import pytest

from gaincell.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "gaincell"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Paths made by running something (outputs), not parts of the repository.
OUTPUTS = ("gaincell-demo/", "runs/", "stories-gaincell", "gpt2-gaincell")


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
