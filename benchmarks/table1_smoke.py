"""The paper's Table 1 columns, offline, on small models: accuracy and wall time per task (docs/evaluation.md).

Runs one model configuration and records it under ``--label`` in the JSON file ``--out`` (other
labels there are kept), with the date, limit, batch size, threads and the machine's load:

    python benchmarks/table1_smoke.py --label stories260K-original --model $GAINCELL_DATA/models/stories260K --limit 100
    python benchmarks/table1_smoke.py --label stories260K-paper-w64 --model ... --convert paper --window 64 --limit 100
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch

import gaincell
from gaincell.atomic import atomic_file
from gaincell.evaluation.harness import plan_tasks, run_tasks
from gaincell.evaluation.lm_eval_model import load_model_dir, load_tokenizer_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--model", required=True, help="a model directory or a .gguf file")
    parser.add_argument("--convert", help="a gaincell preset to convert to (unadapted), e.g. paper")
    parser.add_argument("--window", type=int, help="the converted model's window M")
    parser.add_argument("--tasks", default="table1")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "table1-smoke" / "results.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    plan = plan_tasks(args.tasks)
    model, tokenizer = load_model_dir(args.model), load_tokenizer_dir(args.model)
    if args.convert:
        model = gaincell.convert(model, args.convert, **({"window": args.window} if args.window else {}))
    load_before, start = os.getloadavg(), time.perf_counter()
    table = run_tasks(model, tokenizer, plan, limit=args.limit, batch_size=args.batch_size, on_task=_print)
    run = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model": str(args.model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "attention": args.convert or "original (softmax)",
        "window": args.window,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared with other jobs",
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "torch": torch.__version__,
        "lm_eval": _version("lm_eval"),
        "total_seconds": time.perf_counter() - start,
        **table,
    }
    out = Path(args.out)
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[args.label] = run
    with atomic_file(out) as handle:
        json.dump(runs, handle, indent=1)


def _print(name: str, row: dict) -> None:
    print(f"{name}: {row['samples']} items in {row['seconds']:.1f} s: {row['tasks']}", flush=True)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package.replace("_", "-"))


if __name__ == "__main__":
    main()
