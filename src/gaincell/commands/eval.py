"""``gaincell eval MODEL``: perplexity on a text and/or lm-eval tasks (:mod:`gaincell.evaluation`).

``--tasks paper`` (or ``table1``, a task name, a comma list) runs the paper's Table 1: offline from the
task-data folder (``--task-data DIR`` or ``$GAINCELL_DATA/tasks``), else through lm-eval's own download
from the hub; names and data are checked before the model is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path

from gaincell import devices
from gaincell.atomic import atomic_file, check_own_file, record_written
from gaincell.errors import GainCellError
from gaincell.evaluation.harness import plan_tasks, run_tasks
from gaincell.evaluation.lm_eval_model import load_model_dir, load_tokenizer_dir
from gaincell.evaluation.perplexity import text_perplexity
from gaincell.evaluation.tasks import GROUPS
from gaincell.lock import file_lock
from gaincell.validation import check_int, check_limit, check_output_file, json_ready


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gaincell eval``."""
    parser.add_argument(
        "model_dir", metavar="MODEL_DIR", help="a saved model directory (weights and tokenizer), a .gguf file or a hub id"
    )
    parser.add_argument("--gguf-file", metavar="NAME", help="the GGUF file inside MODEL_DIR or the hub repo")
    source = parser.add_argument_group("perplexity")
    source.add_argument("--text", metavar="FILE", help="a .txt file or a folder of them")
    source.add_argument("--dataset", metavar="NAME", help="a hub dataset instead of --text (needs the network)")
    source.add_argument("--dataset-config", metavar="NAME", help="the hub dataset's configuration")
    source.add_argument("--split", default="test", help="the hub dataset's split (default: test)")
    source.add_argument("--context", type=int, metavar="N", help="window length in tokens (default: the model's positions)")
    source.add_argument("--stride", type=int, metavar="N", help="window step in tokens (default: context / 2)")
    source.add_argument("--max-tokens", type=int, metavar="N", help="score only the first N tokens")
    tasks = parser.add_argument_group("lm-evaluation-harness")
    groups = "; ".join(f"{name} = {', '.join(members)}" for name, members in GROUPS.items())
    tasks.add_argument("--tasks", metavar="LIST", help=f"comma-separated tasks or groups ({groups})")
    tasks.add_argument(
        "--task-data",
        metavar="DIR",
        help="the local task-data folder, for offline use (default: $GAINCELL_DATA/tasks, else ../shared/data/tasks "
        "when it exists, else lm-eval downloads the tasks from the Hugging Face hub)",
    )
    tasks.add_argument(
        "--include-path", metavar="DIR",
        help="a folder of extra lm-eval task YAML files; lm-eval imports and runs the Python files they name "
        "(!function), so give only a folder you trust",
    )  # fmt: skip
    tasks.add_argument("--limit", type=float, metavar="N", help="items per task (a fraction if < 1; default: all)")
    tasks.add_argument("--num-fewshot", type=int, metavar="N", help="few-shot examples per item")
    tasks.add_argument(
        "--max-length", type=int, metavar="N",
        help="longest request in tokens (default: the model's positions); an adapted RoPE model holds up only "
        "at positions it was trained at (docs/real-models.md, Positions)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="windows or requests per forward")
    devices.add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--output", metavar="FILE", help="also write the results as JSON to FILE")


def run(args: argparse.Namespace) -> int:
    """``gaincell eval``: perplexity on a text and/or lm-eval tasks for a saved model."""
    if args.text is None and args.dataset is None and args.tasks is None:
        raise GainCellError("give --text FILE, --dataset NAME and/or --tasks LIST")
    _check_arguments(args)
    with ExitStack() as stack:
        if args.output is not None:  # a file this command did not write is never replaced; one eval per file
            output = check_own_file("--output", args.output, OUTPUT_WRITER)
            stack.enter_context(file_lock(output, "--output", "gaincell eval"))
        return _run(args)


#: The writer ``--output`` files are listed under in their folder's manifest (:mod:`gaincell.atomic`).
OUTPUT_WRITER = "gaincell eval --output"


def _run(args: argparse.Namespace) -> int:
    plan = None
    if args.tasks is not None:
        plan = plan_tasks(args.tasks, task_data=args.task_data, include_path=args.include_path)
        where = "lm-eval's own download from the Hugging Face hub" if plan.hub else plan.task_data
        if plan.local:
            print(f"gaincell eval: task data: {where}", file=sys.stderr, flush=True)
    device, dtype = devices.parse_device(args.device), devices.parse_dtype(args.dtype)
    tokenizer = load_tokenizer_dir(args.model_dir, args.gguf_file)
    model = load_model_dir(args.model_dir, args.gguf_file).to(device=device, dtype=dtype)
    results: dict = {"model": str(args.model_dir)}
    if args.text is not None or args.dataset is not None:
        results["perplexity"] = {
            "corpus": args.text or args.dataset,
            **text_perplexity(
                model,
                tokenizer,
                args.text,
                dataset=args.dataset,
                split=args.split,
                config=args.dataset_config,
                context=args.context,
                stride=args.stride,
                batch_size=args.batch_size,
                max_tokens=args.max_tokens,
            ),
        }
    if plan is not None:
        limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
        results |= run_tasks(
            model,
            tokenizer,
            plan,
            limit=limit,
            num_fewshot=args.num_fewshot,
            batch_size=args.batch_size,
            max_length=args.max_length,
            on_task=_print_task_time,
        )
    strict = json_ready(results)  # NaN / inf -> null, with the reason under "non_finite"
    print(json.dumps(strict, indent=1, allow_nan=False) if args.json else _table(results))
    if args.output is not None:
        with atomic_file(args.output) as handle:
            json.dump(strict, handle, indent=1, allow_nan=False)
        record_written(Path(args.output).absolute().parent, [Path(args.output).name], OUTPUT_WRITER)
    if strict.get("non_finite"):  # a NaN result is a failed evaluation, not a score
        print(f"gaincell eval: not finite: {', '.join(strict['non_finite'])}", file=sys.stderr)
        return 1
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    """Every number and the output path, before the model loads: a bad one must not cost an evaluation
    (``--output DIR`` used to fail only when the results were written)."""
    check_int("--batch-size", args.batch_size, 1)
    for option, value, minimum in (
        ("--context", args.context, 2),
        ("--stride", args.stride, 1),
        ("--max-tokens", args.max_tokens, 2),
    ):
        if value is not None:
            check_int(option, value, minimum)
    if args.limit is not None:
        check_limit("--limit", args.limit)
    if args.num_fewshot is not None:
        check_int("--num-fewshot", args.num_fewshot, 0)
    if args.max_length is not None:
        check_int("--max-length", args.max_length, 2)
    if args.output is not None:
        check_output_file("--output", args.output)


def _print_task_time(name: str, row: dict) -> None:
    print(f"gaincell eval: {name}: {row['samples']} items in {row['seconds']:.1f} s", file=sys.stderr, flush=True)


def _table(results: dict) -> str:
    lines = [f"model: {results['model']}"]
    if "perplexity" in results:
        ppl = results["perplexity"]
        lines += [
            "",
            f"{'corpus':<32} {'context':>7} {'stride':>7} {'tokens':>9} {'nll':>8} {'ppl':>10}",
            f"{Path(ppl['corpus']).name:<32} {ppl['context']:>7} {ppl['stride']:>7} {ppl['tokens']:>9} "
            f"{ppl['nll']:>8.4f} {ppl['ppl']:>10.3f}",
        ]
    if "tasks" in results:
        limit = "all items" if results["limit"] is None else f"--limit {results['limit']}"
        lines += ["", f"lm-eval tasks ({limit}, batch size {results['batch_size']}, {results['num_fewshot'] or 0}-shot, "
                      f"max length {results['max_length']})"]  # fmt: skip
        lines += [f"{'task':<24} {'metric':<20} {'value':>10} {'stderr':>8} {'items':>6} {'seconds':>8}"]
        for task, metrics in results["tasks"].items():
            items, seconds = results["samples"][task], results["seconds"][task]
            for metric, value in metrics.items():
                if "_stderr," in metric:
                    continue
                stderr = metrics.get(metric.replace(",", "_stderr,", 1))
                stderr = _number(stderr) if isinstance(stderr, float) else ""
                lines.append(f"{task:<24} {metric:<20} {_number(value):>10} {stderr:>8} {items:>6} {seconds:>8.1f}")
    return "\n".join(lines)


def _number(value: float) -> str:
    """Accuracies with 4 decimals; the perplexities of an untrained model in 4 digits."""
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
