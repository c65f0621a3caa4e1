"""``gaincell demo``: the paper's experiment at laptop scale, offline (:mod:`gaincell.demo.experiment`)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from gaincell import devices
from gaincell.adaptation.data import default_corpus_text, load_text_corpus
from gaincell.demo.experiment import QUICK, DemoConfig, run_demo
from gaincell.errors import GainCellError


def _texts(args) -> tuple[str, str, str | None]:
    """(training text, description, evaluation text or None)."""
    if args.text and args.dataset:
        raise GainCellError("give at most one of --text FILE and --dataset NAME")
    if args.text:
        corpus = load_text_corpus(text=args.text)
        name = str(args.text)
    elif args.dataset:
        corpus = load_text_corpus(dataset=args.dataset, config=args.dataset_config, split="train")
        name = f"{args.dataset} ({args.dataset_config or 'default'})"
    else:
        corpus, name = None, "Python's bundled documentation (pydoc_data, offline default)"
    text = default_corpus_text() if corpus is None else "\n\n".join(corpus["text"])
    eval_text = None
    if args.eval_text:
        eval_text = "\n\n".join(load_text_corpus(text=args.eval_text)["text"])
    if not text.strip():
        raise GainCellError(f"corpus {name} is empty")
    return text, name, eval_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", help="training corpus: a .txt file or folder (default: Python's bundled docs)")
    parser.add_argument("--dataset", help="training corpus: a hub dataset name (needs the network)")
    parser.add_argument("--dataset-config", help="the hub dataset's config name")
    parser.add_argument("--eval-text", help="held-out text for perplexity (default: the corpus's last 10%%)")
    parser.add_argument("--output", default="gaincell-demo", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--quick", action="store_true", help="a smaller run of about a minute on 2 CPU cores (checks the install)"
    )
    parser.add_argument("--seed", type=int, default=0)
    devices.add_arguments(
        parser, "the training runs' autocast precision: float32 (none) | bfloat16 | float16 (default: bfloat16 on a GPU)"
    )
    for name in ("pretrain_steps", "linear_steps", "nonlinear_steps", "window", "context"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"override {name}")


def run(args: argparse.Namespace) -> int:
    device, precision = devices.parse_device(args.device), devices.mixed_precision(args.dtype)
    config = QUICK if args.quick else DemoConfig()
    names = ("pretrain_steps", "linear_steps", "nonlinear_steps", "window", "context")
    changes = {name: getattr(args, name) for name in names}
    config = replace(config, seed=args.seed, **{k: v for k, v in changes.items() if v is not None})
    text, corpus_name, eval_text = _texts(args)
    output = Path(args.output)
    with devices.accelerate_on(device):
        results = run_demo(config, output, text, corpus_name, eval_text, precision=precision)
    _print_table(results)
    print(f"report: {output / 'report.md'}   models: {output / 'pretrained'} (a, softmax), {output / 'model'} (e, adapted)")
    return 0


def _print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="gaincell demo: held-out perplexity")
    table.add_column("")
    table.add_column("model")
    table.add_column("perplexity", justify="right")
    for row in results["perplexity"]:
        table.add_row(f"({row['key']})", row["label"], f"{row['ppl']:.2f}")
    console = Console()
    console.print(table)
    for name, ok in results["checks"].items():
        console.print(f"{name}: {'yes' if ok else 'no'}")
    sample = results["sample"]
    console.print(Text.assemble("sample: ", (sample["prompt"], "bold"), sample["continuation"]))
    for line in results["hardware_summary"]:
        console.print(Text(line))
