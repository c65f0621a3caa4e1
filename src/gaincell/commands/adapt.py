"""``gaincell adapt CONFIG``: run the adaptation recipe of a TOML file (:mod:`gaincell.adaptation.recipe`)."""

from __future__ import annotations

import argparse
import json

from gaincell.adaptation.distributed import rank
from gaincell.adaptation.recipe import read_recipe
from gaincell.adaptation.stages import adapt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Device and precision come from accelerate, which runs every stage: the GPU when there is one "
        "(accelerate launch --cpu, or ACCELERATE_USE_CPU=1, for the CPU; accelerate launch for several GPUs), and "
        "each stage's mixed_precision (auto: bf16 autocast on a GPU that has it, fp16 on others, none on the CPU; "
        "--set linear.mixed_precision=no for float32). See docs/gpu.md."
    )
    parser.add_argument("config", metavar="CONFIG", help="recipe TOML file (see examples/adapt.toml)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a recipe field, e.g. --set linear.max_steps=100 --set hardware.window=256",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in output_dir")
    parser.add_argument("--output-dir", help="override the recipe's output_dir")


def run(args: argparse.Namespace) -> int:
    overrides = list(args.set)
    if args.output_dir:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")
    recipe = read_recipe(args.config, overrides)
    summary = adapt(recipe, resume=args.resume)
    if rank() != 0:  # one summary for a run of many processes
        return 0
    for name in recipe.stages:
        print(f"{name:>11}: {stage_line(summary[name])}")
    print(f"models and summary in {recipe.output_dir} (each stage's in STAGE/model, STAGE/summary.json)")
    return 0


def stage_line(summary: dict) -> str:
    """One short line of a stage's summary: its numbers and words; lists and tables (the initialise stage's
    per-layer statistics, kilobytes of JSON) only counted, as they are whole in the stage's summary.json."""
    parts = []
    for key, value in summary.items():
        if isinstance(value, bool) or value is None:
            parts.append(f"{key} {value}")
        elif isinstance(value, int):
            parts.append(f"{key} {value:,}")
        elif isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        elif isinstance(value, str):
            parts.append(f"{key} {value if len(value) <= 60 else value[:57] + '...'}")
        elif isinstance(value, (list, tuple, dict)):
            parts.append(f"{key} [{len(value)}]")
    return ", ".join(parts)
