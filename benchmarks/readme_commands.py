"""Run every command of README.md from a fresh clone, as a new user would, and record each one.

Issue 26: from a fresh clone with no ../shared and no network beyond the package registries, every
README command either runs or is the documented fetch step. This script makes that a measurement:
it reads the fenced ``bash`` and ``python`` blocks of the clone's README.md (so a changed README is
measured as it reads), runs each command in the clone with ``GAINCELL_DATA`` unset, times it with
``/usr/bin/time -f %e`` and writes ``commands.json`` (exit code, time, load averages, last output
lines, what it wrote) and ``table.md``.

    git clone -q /work/main /tmp/newuser/gaincell   # a parent folder with no ``shared`` in it
    python benchmarks/readme_commands.py /tmp/newuser/gaincell --out benchmarks/results/readme-commands \
        --skip-demo /tmp/demo-quiet --quick-output /tmp/newuser/quick

``--skip-demo DIR`` drops the trailing ``&& gaincell demo`` of the install line and copies DIR (an
earlier ``gaincell demo`` output) to the clone's ``gaincell-demo/`` so the commands that read it run;
``--quick-output`` also times ``gaincell demo --quick``. Not part of the test suite: it installs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO_SUFFIX = " && gaincell demo"
IGNORED = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}


def readme_commands(readme: str) -> list[tuple[str, str]]:
    """The README's commands in order: ("bash", one line) per command line, ("python", block) per snippet."""
    commands = []
    for lang, body in re.findall(r"^```(bash|python)\n(.*?)^```", readme, flags=re.S | re.M):
        if lang == "python":
            commands.append(("python", body))
            continue
        for line in body.splitlines():
            line = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()  # drop the trailing comment
            if line and not line.startswith("#"):
                commands.append(("bash", line))
    return commands


def snapshot(root: Path) -> dict[str, float]:
    """Modification time of every file under root, the virtual environment and caches left out."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in IGNORED and not d.endswith(".egg-info")]
        for name in filenames:
            path = Path(dirpath, name)
            files[str(path.relative_to(root))] = path.stat().st_mtime
    return files


def written(before: dict[str, float], after: dict[str, float]) -> list[str]:
    """New or changed files, folded to their first two path parts so a model folder is one entry."""
    changed = sorted(p for p, t in after.items() if before.get(p) != t)
    folded = []
    for path in changed:
        parts = Path(path).parts
        short = "/".join(parts[:2]) + ("/" if len(parts) > 2 else "")
        if short not in folded:
            folded.append(short)
    return folded


def run(command: str, clone: Path, activate: bool, timeout: float) -> dict:
    """One command in a fresh bash in the clone, timed by /usr/bin/time; GAINCELL_DATA unset."""
    env = {k: v for k, v in os.environ.items() if k != "GAINCELL_DATA" and k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    line = (". .venv/bin/activate && " if activate else "") + command
    with tempfile.NamedTemporaryFile("r", suffix=".time") as timing:
        before, load_before = snapshot(clone), os.getloadavg()
        start = time.monotonic()
        try:
            proc = subprocess.run(
                ["/usr/bin/time", "-f", "%e", "-o", timing.name, "bash", "-c", line],
                cwd=clone,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
            code, out = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as exc:
            code, out = None, (exc.stdout or b"").decode(errors="replace")
        wall = time.monotonic() - start
        text = timing.read().strip().splitlines()
    seconds = float(text[-1]) if text and re.fullmatch(r"[\d.]+", text[-1]) else round(wall, 2)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return {
        "command": command,
        "seconds": seconds,
        "exit_code": code,
        "timed_out": code is None,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "last_lines": lines[-2:],
        "tail": lines[-30:],
        "output_lines": len(lines),
        "wrote": written(before, snapshot(clone)),
    }


def table(results: list[dict]) -> str:
    """Markdown: command, seconds, exit code, load average, last line of output."""
    rows = ["| command | time (s) | exit | load (1 min) | last line of output |", "|---|---:|---:|---:|---|"]
    for r in results:
        last = (r["last_lines"][-1] if r["last_lines"] else "").replace("|", "\\|")[:160]
        code = "timeout" if r["timed_out"] else r["exit_code"]
        cmd = r["command"].replace("|", "\\|")
        rows.append(f"| `{cmd}` | {r['seconds']:.1f} | {code} | {r['load_before'][0]:.1f} | {last} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clone", type=Path, help="a fresh clone of gaincell (no ../shared beside it)")
    parser.add_argument("--out", type=Path, required=True, help="folder for commands.json and table.md")
    parser.add_argument("--skip-demo", type=Path, metavar="DIR", help="copy DIR to gaincell-demo/, not running the demo")
    parser.add_argument("--quick-output", type=Path, help="also time `gaincell demo --quick --output PATH`")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before one command is stopped")
    parser.add_argument(
        "--only",
        metavar="TEXT",
        help="run again only the commands containing TEXT (the clone installed),"
        " replacing their entries in an existing commands.json",
    )
    args = parser.parse_args(argv)
    clone = args.clone.resolve()
    if (clone.parent / "shared").exists():
        parser.error(f"clone: {clone.parent / 'shared'} exists; a new user has none")
    commands = readme_commands((clone / "README.md").read_text())
    previous = args.out / "commands.json"
    results = json.loads(previous.read_text())["results"] if args.only and previous.exists() else []
    installed = bool(args.only)
    for lang, command in commands:
        if args.only and args.only not in command:
            continue
        notes = []
        if lang == "python":
            (clone / "readme_snippet.py").write_text(command)
            command, notes = "python readme_snippet.py", ["the README's Python block, saved as readme_snippet.py"]
        if args.skip_demo and command.endswith(DEMO_SUFFIX):
            command = command[: -len(DEMO_SUFFIX)]
            notes.append(f"without the trailing `gaincell demo`; {args.skip_demo} copied to gaincell-demo/ instead")
        print(f"$ {command}", file=sys.stderr, flush=True)
        result = run(command, clone, activate=installed, timeout=args.timeout)
        result.update(language=lang, notes=notes)
        same = [i for i, r in enumerate(results) if r["command"] == command]
        if same:
            result["notes"].append(f"run again with --only at {time.strftime('%H:%M', time.gmtime())} UTC")
            results[same[0]] = result
        else:
            results.append(result)
        print(f"  {result['seconds']} s, exit {result['exit_code']}: {' / '.join(result['last_lines'])}", file=sys.stderr)
        if ".venv/bin/activate" in command and not args.only:
            installed = True
            if args.skip_demo:
                shutil.copytree(args.skip_demo, clone / "gaincell-demo", symlinks=True)
            if args.quick_output:
                quick = run(f"gaincell demo --quick --output {args.quick_output}", clone, True, args.timeout)
                quick.update(language="bash", notes=["the README's `gaincell demo --quick`, written outside the clone"])
                results.append(quick)
                print(f"  quick demo: {quick['seconds']} s, exit {quick['exit_code']}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "clone": str(clone),
        "commit": subprocess.run(
            ["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
    }
    (args.out / "commands.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    (args.out / "table.md").write_text(table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
