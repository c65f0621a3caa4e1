"""``gaincell eval MODEL``: perplexity on a text and/or lm-eval tasks (:mod:`gaincell.evaluation.perplexity`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gaincell.errors import GainCellError
from gaincell.evaluation.perplexity import load_model_dir, load_tokenizer_dir, run_lm_eval, text_perplexity
from gaincell.hf.pretrained import torch_device


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
    tasks.add_argument("--tasks", metavar="LIST", help="comma-separated lm-eval tasks, e.g. arc_easy,piqa")
    tasks.add_argument("--include-path", metavar="DIR", help="a folder of extra lm-eval task YAML files")
    tasks.add_argument("--limit", type=float, metavar="N", help="items per task (a fraction if < 1)")
    tasks.add_argument("--num-fewshot", type=int, metavar="N", help="few-shot examples per item")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="windows or requests per forward")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    """``gaincell eval``: perplexity on a text and/or lm-eval tasks for a saved model."""
    if args.text is None and args.dataset is None and args.tasks is None:
        raise GainCellError("give --text FILE, --dataset NAME and/or --tasks LIST")
    device = torch_device(args.device)
    tokenizer = load_tokenizer_dir(args.model_dir, args.gguf_file)
    model = load_model_dir(args.model_dir, args.gguf_file).to(device)
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
    if args.tasks is not None:
        limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
        results["tasks"] = run_lm_eval(
            model,
            tokenizer,
            [task for task in args.tasks.split(",") if task],
            include_path=args.include_path,
            limit=limit,
            num_fewshot=args.num_fewshot,
            batch_size=args.batch_size,
        )
    print(json.dumps(results, indent=1) if args.json else _table(results))
    return 0


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
        lines += ["", f"{'task':<32} {'metric':<20} {'value':>8}"]
        for task, metrics in results["tasks"].items():
            for metric, value in metrics.items():
                lines.append(f"{task:<32} {metric:<20} {value:>8.4f}")
    return "\n".join(lines)
