"""``gaincell convert MODEL OUTPUT``: swap a Hugging Face model's attention for a chip preset and save it.

What the Python snippet of the README does, from the command line: an unadapted model (the paper's row
(c), "weights swapped in") can then be evaluated, generated from or costed like any saved model, and a
recipe can start from it. The hardware is a preset plus ``--set`` overrides, as in a recipe's ``[hardware]``.
"""

from __future__ import annotations

import argparse

from gaincell.adaptation.recipe import hardware_from_dict
from gaincell.chip.config import PRESETS
from gaincell.hf.convert import attention_modules, convert
from gaincell.hf.pretrained import save
from gaincell.tomlfile import parse_override, set_nested


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a hub id, a save_pretrained folder or a .gguf file")
    parser.add_argument("output", metavar="OUTPUT", help="the folder to save the converted model in (new or empty)")
    parser.add_argument("--gguf-file", metavar="NAME", help="the GGUF file inside MODEL (a folder or hub repo)")
    parser.add_argument("--preset", default="paper", choices=PRESETS, help="the chip model (default: %(default)s)")
    parser.add_argument("--window", type=int, metavar="M", help="stored tokens per head (default: the preset's)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="override a hardware field as in a recipe's [hardware], e.g. --set leakage=0 --set periphery.adc.levels=16",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from gaincell.evaluation.lm_eval_model import load_model_dir, load_tokenizer_dir

    hardware: dict = {"preset": args.preset} | ({} if args.window is None else {"window": args.window})
    for override in args.set:
        set_nested(hardware, *parse_override(override, "field=value"))
    config = hardware_from_dict(hardware)  # checked before the model loads
    tokenizer = load_tokenizer_dir(args.model, args.gguf_file)
    model = convert(load_model_dir(args.model, args.gguf_file), config)
    path = save(model, args.output, tokenizer)
    layers = len(attention_modules(model))
    print(f"converted {layers} attention layers of {args.model} to the {args.preset} preset (window M = {config.window})")
    print(f"saved in {path}; e.g. gaincell eval {args.output} --text FILE, gaincell generate {args.output} --prompt TEXT")
    return 0
