"""Time the gain-cell op of two checkouts side by side: a refactor must not cost speed.

usage: ``python benchmarks/compare_versions.py OLD_CHECKOUT [--lengths 1024 4096] [--rounds 3] [--generate]``

Each round runs every (T, pass) case of ``bench_attention.py --case gaincell`` once for the old
checkout and once for this one, alternating, each in a fresh process with that checkout's ``src``
first on the path, so a loaded machine slows both alike. ``--generate`` adds generation through the
gain-cell memory (``bench_generate.py --case``: stories260K and the GPT-2 shape, prompt 128, 256 new
tokens, batch 1 and 8, window 256), timed the same way, in tokens per CPU second (the fairer measure
when other jobs share the cores; both checkouts run the same script, this one's). Prints one JSON
object: per case the median over rounds of each checkout's figure, and new / old; a recorded comparison
goes in a folder of its own, ``> benchmarks/results/compare-WHAT-1thread/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def time_case(checkout: Path, length: int, which: str, repeats: int) -> float:
    script = checkout / "benchmarks" / "bench_attention.py"
    command = [sys.executable, str(script), "--case", "gaincell", str(length), which, "--repeats", str(repeats)]
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def generate_case(checkout: Path, case: dict, threads: int) -> float:
    """Tokens per CPU second of one generation case, run by this checkout's bench_generate with ``checkout``'s
    package (the benchmark script itself is the same for both)."""
    command = [sys.executable, str(HERE / "benchmarks" / "bench_generate.py"), "--case", json.dumps(case)]
    command += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["tokens_per_cpu_s"]


def generation_cases(stories: str) -> dict[str, dict]:
    common = {"attention": "gaincell", "prompt": 128, "new": 256, "window": 256, "stories": stories, "repeats": 2}
    return {f"{name}/batch{batch}": {"name": name, "batch": batch, **common}
            for name in ("stories260K", "gpt2-shape") for batch in (1, 8)}  # fmt: skip


def compare(trees: dict[str, Path], cases: dict, measure, rounds: int) -> dict:
    """Each case once per checkout per round, the order alternating between rounds; medians and new / old."""
    runs: dict[str, dict[str, list[float]]] = {case: {"old": [], "new": []} for case in cases}
    for round_ in range(rounds):
        for case, spec in cases.items():
            for name in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
                value = measure(trees[name], spec)
                runs[case][name].append(value)
                print(f"round {round_} {case} {name}: {value:.4g}", file=sys.stderr, flush=True)
    summary = {}
    for case, values in runs.items():
        old, new = statistics.median(values["old"]), statistics.median(values["new"])
        summary[case] = {"old": old, "new": new, "new_over_old": new / old, "runs": values}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the other checkout (e.g. a git worktree of the old commit)")
    parser.add_argument("--lengths", type=int, nargs="*", default=[1024, 4096])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--generate", action="store_true", help="also generation tokens per CPU second")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each generation process")
    args = parser.parse_args()
    trees = {"old": args.old.resolve(), "new": HERE}
    op_cases = {f"T={t}/{w}": (t, w) for t in args.lengths for w in ("fwd", "fwd+bwd")}
    report = {
        "old": str(trees["old"]),
        "new": str(trees["new"]),
        "unit": {"op": "seconds", "generation": "tokens per CPU s"},
    }
    report["op"] = compare(trees, op_cases, lambda tree, case: time_case(tree, *case, args.repeats), args.rounds)
    if args.generate:
        from gaincell.datadir import require_data_dir

        stories = str(require_data_dir("--generate") / "models" / "stories260K")
        measure = lambda tree, case: generate_case(tree, case, args.threads)  # noqa: E731
        report["generation"] = compare(trees, generation_cases(stories), measure, args.rounds)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
