"""Time the gain-cell op of two checkouts side by side: a refactor must not cost speed.

usage: ``python benchmarks/compare_versions.py OLD_CHECKOUT [--lengths 1024 4096] [--rounds 3]``

Each round runs every (T, pass) case of ``bench_attention.py --case gaincell`` once for the old
checkout and once for this one, alternating, each in a fresh process with that checkout's ``src``
first on the path, so a loaded machine slows both alike. Prints one JSON object: per case the
median over rounds of each checkout's median time, and new / old.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the other checkout (e.g. a git worktree of the old commit)")
    parser.add_argument("--lengths", type=int, nargs="*", default=[1024, 4096])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    trees = {"old": args.old.resolve(), "new": HERE}
    cases = [(length, which) for length in args.lengths for which in ("fwd", "fwd+bwd")]
    times: dict[str, dict[str, list[float]]] = {f"T={t}/{w}": {"old": [], "new": []} for t, w in cases}
    for round_ in range(args.rounds):
        for length, which in cases:
            for name in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
                seconds = time_case(trees[name], length, which, args.repeats)
                times[f"T={length}/{which}"][name].append(seconds)
                print(f"round {round_} T={length} {which} {name}: {seconds:.3f} s", file=sys.stderr, flush=True)
    summary = {}
    for case, runs in times.items():
        old, new = statistics.median(runs["old"]), statistics.median(runs["new"])
        summary[case] = {"old_s": old, "new_s": new, "new_over_old": new / old, "runs": runs}
    print(json.dumps({"old": str(trees["old"]), "new": str(trees["new"]), "cases": summary}, indent=2))


if __name__ == "__main__":
    main()
