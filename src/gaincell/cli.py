"""The ``gaincell`` command line.

Each sub-command lives with the code it drives and exposes two functions,
``add_arguments(parser)`` and ``run(args) -> int``; this module only lists them, imports them
lazily (so ``gaincell hw`` does not pay for importing transformers) and turns a
:class:`~gaincell.errors.GainCellError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gaincell.errors import GainCellError

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("gaincell.demo", "train, adapt and evaluate a small gain-cell GPT-2 end to end, offline"),
    "selfcheck": ("gaincell.selfcheck", "check the attention op against SPEC's equations and time it"),
    "adapt": ("gaincell.adapt", "adapt a pre-trained model to gain-cell attention (SPEC §4 recipe)"),
    "eval": ("gaincell.evaluate", "perplexity and lm-eval tasks of a saved model"),
    "generate": ("gaincell.generation", "continue a prompt with a saved model, through its gain-cell memories"),
    "hw": ("gaincell.hardware.cli", "area, latency and energy of gain-cell attention vs GPUs"),
}


class _Parser(argparse.ArgumentParser):
    """argparse exits with code 2 on bad arguments already; keep its one-line message."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gaincell", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except GainCellError as error:
        print(f"gaincell {args.command}: error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"gaincell {args.command}: error: file not found: {error.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gaincell {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
