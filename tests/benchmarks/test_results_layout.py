"""``benchmarks/`` keeps the scripts; every experiment's results (JSON, tables, plots) are in a folder of its
own under ``benchmarks/results/``, named after the experiment (issue 25, What to build 6), so a reader finds
one run's files together and the scripts' folder is not a heap of outputs. A run's console log (``log.txt``,
what a device call tees) may sit beside its results."""

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_benchmarks_holds_scripts_and_results_holds_one_folder_per_experiment():
    files = [path.name for path in BENCHMARKS.iterdir() if path.is_file()]
    assert files and all(name.endswith(".py") for name in files), files
    folders = [path.name for path in BENCHMARKS.iterdir() if path.is_dir() and path.name != "__pycache__"]
    assert folders == ["results"]
    experiments = sorted((BENCHMARKS / "results").iterdir())
    assert experiments and all(path.is_dir() for path in experiments)
    for folder in experiments:
        results = [path for path in folder.rglob("*") if path.is_file() and not path.name.startswith(".")]
        assert results and all(path.suffix in (".json", ".md", ".png") or path.name == "log.txt" for path in results), folder
