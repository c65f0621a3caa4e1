"""benchmarks/real_models.py's (e) rows across processes: ``--reuse`` reads a finished row back,
``--resume`` continues an interrupted one (its training clock kept), and neither starts a fresh row
in a folder that still holds an old one."""

import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import real_models  # noqa: E402

RECIPE = {"model": "m", "stages": ["initialised", "transfer", "distill"]}


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def fake_adapt(recipe, *, device=None, callbacks=(), resume=False):
        seen.append({"resume": resume, "leftover": (Path(recipe.output_dir) / "leftover").exists()})
        Path(recipe.output_dir).mkdir(parents=True, exist_ok=True)
        return {"distill": {"tokens": 10}}

    monkeypatch.setattr(real_models, "adapt", fake_adapt)
    monkeypatch.setattr(real_models, "recipe_from_dict", lambda table: Namespace(output_dir=table["output_dir"]))
    return seen


def interrupted(folder: Path) -> Path:
    (folder / "distill").mkdir(parents=True)
    (folder / "leftover").write_text("a checkpoint, say")
    log = [{"step": 1, "elapsed": 40.0}, {"step": 2, "elapsed": 1234.5}]
    (folder / "distill" / "metrics.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in log))
    return folder


def test_a_fresh_row_starts_from_an_empty_folder(tmp_path, calls):
    folder = interrupted(tmp_path / "row")
    summary, wall = real_models.adapted(RECIPE, folder, Namespace(reuse=False, resume=False))
    assert calls == [{"resume": False, "leftover": False}] and summary == {"distill": {"tokens": 10}}
    assert json.loads((folder / "wall_s.json").read_text()) == {"wall_s": wall, "resumed": False} and wall < 60


def test_resume_continues_in_place_and_keeps_the_training_clock(tmp_path, calls):
    folder = interrupted(tmp_path / "row")
    _, wall = real_models.adapted(RECIPE, folder, Namespace(reuse=False, resume=True))
    assert calls == [{"resume": True, "leftover": True}]
    assert wall == 1234.5 and json.loads((folder / "wall_s.json").read_text())["resumed"] is True
    _, again = real_models.adapted(RECIPE, tmp_path / "new", Namespace(reuse=False, resume=True))
    assert calls[-1] == {"resume": False, "leftover": False}  # nothing there to resume: a fresh start


def test_reuse_reads_a_finished_row_back_without_adapting(tmp_path, calls):
    folder = tmp_path / "row"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"distill": {"tokens": 7}}))
    (folder / "wall_s.json").write_text(json.dumps({"wall_s": 99.0}))
    assert real_models.adapted(RECIPE, folder, Namespace(reuse=True, resume=False)) == ({"distill": {"tokens": 7}}, 99.0)
    assert calls == []
