"""``gaincell hw``: area, latency and energy of gain-cell attention against GPUs (SPEC-hardware §6.3.5).

``gaincell hw --help`` imports only this module, so it stays cheap: the cost model, torch,
matplotlib and rich are imported inside :func:`run` only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama-7b")  # models.DECODERS, kept import-free


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``gaincell hw``; ``None`` defaults mean "take it from --model / --baseline"."""
    workload = parser.add_argument_group("workload")
    workload.add_argument(
        "--model",
        default="gpt2",
        metavar="MODEL",
        help=f"decoder shape: {', '.join(MODELS)}, a saved model directory, or a hub id whose config is fetched "
        "(default: gpt2)",
    )
    workload.add_argument("--heads", type=int, help="query heads H (default: the model's)")
    workload.add_argument("--kv-heads", type=int, help="key/value heads of grouped-query attention (default: the model's)")
    workload.add_argument("--head-dim", type=int, help="head size D (default: the model's)")
    workload.add_argument("--layers", type=int, help="decoder layers (default: the model's)")
    workload.add_argument("--hidden-size", type=int, help="model width d_model (default: the model's)")
    workload.add_argument("--vocab", type=int, help="vocabulary size (default: the model's)")
    workload.add_argument("--window", type=int, default=1024, help="stored tokens per head M (default: 1024)")
    workload.add_argument("--subtile-rows", type=int, default=64, help="sub-tile height R (default: 64)")
    workload.add_argument("--batch", type=int, default=64, help="GPU batch of sequences (default: 64, as §6.2)")
    hardware = parser.add_argument_group("hardware")
    hardware.add_argument("--tech", default="paper", help="gain-cell technology: paper, osfet, or a path to a TOML preset")
    hardware.add_argument(
        "--gpu",
        action="append",
        metavar="NAME",
        help="rtx4090, jetson-nano, a100, h100, h200; repeat or comma-separate (default: all; "
        "the first is used for the whole-model view)",
    )
    hardware.add_argument(
        "--baseline",
        choices=("paper", "fused"),
        default="paper",
        help="GPU kernel: paper = the authors' eager fp32 matmuls (3 DRAM passes over K, V); "
        "fused = one pass, SDPA / flash-decoding style, fp16 (default: paper)",
    )
    hardware.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="GPU dtype (default: the baseline's)")
    hardware.add_argument(
        "--normaliser",
        action="store_true",
        help="cost the chip option periphery.normaliser: a ones column per V sub-tile and a digital divider "
        "(a deviation from the paper; docs/op.md)",
    )
    hardware.add_argument("--token-rate", type=float, metavar="HZ", help="tokens per second for the leakage/retention check")
    measure = parser.add_argument_group("measure the GPU side on this machine (SPEC-hardware §6.2 protocol)")
    measure.add_argument("--measure", action="store_true", help="time decode attention here with torch")
    measure.add_argument("--measure-device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    measure.add_argument("--measure-steps", type=int, default=20, help="decode steps per repetition (20)")
    measure.add_argument("--measure-repeats", type=int, default=5, help="timed repetitions, median taken (5)")
    measure.add_argument("--measure-warmup", type=int, default=5, help="untimed warm-up steps (5)")
    measure.add_argument("--measure-threads", type=int, help="torch CPU threads during the measurement")
    measure.add_argument("--measure-energy-s", type=float, default=1.0,
                         help="seconds of each energy window, idle then running (1)")  # fmt: skip
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    output.add_argument("--plot", metavar="DIR", help="write PNG plots into DIR")


def _check_plot(plot: str | None) -> None:
    """``--plot``: a folder, where a user's file named like a plot is kept (refused before any work)."""
    from gaincell.validation import fail

    if plot is not None and not plot.strip():
        fail("--plot", "a folder for the PNG files (new or existing)", plot)
    if plot and Path(plot).exists() and not Path(plot).is_dir():
        fail("--plot", "a folder for the PNG files (new or existing)", f"{plot} (an existing file)")
    if plot:
        from gaincell.hardware.plots import check_plot_folder

        check_plot_folder(plot)


def run(args: argparse.Namespace) -> int:
    """Build the report, print it (tables or JSON) and write the plots if asked."""
    import json

    from gaincell.hardware.render import render
    from gaincell.hardware.report import HardwareQuery, build_report, resolve
    from gaincell.validation import json_ready

    _check_plot(args.plot)
    device = args.measure_device
    if args.measure and device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    query = HardwareQuery(
        model=args.model,
        heads=args.heads,
        head_dim=args.head_dim,
        layers=args.layers,
        kv_heads=args.kv_heads,
        hidden_size=args.hidden_size,
        vocab=args.vocab,
        window=args.window,
        subtile_rows=args.subtile_rows,
        normaliser=args.normaliser,
        tech=args.tech,
        gpus=tuple(args.gpu) if args.gpu else None,
        batch=args.batch,
        baseline=args.baseline,
        dtype=args.dtype,
        token_rate=args.token_rate,
        measure=args.measure,
        measure_device=device or "cpu",
        measure_steps=args.measure_steps,
        measure_repeats=args.measure_repeats,
        measure_warmup=args.measure_warmup,
        measure_threads=args.measure_threads,
        measure_energy_s=args.measure_energy_s,
    )
    report = build_report(query)
    written = []
    if args.plot:
        from gaincell.hardware.plots import write_plots

        written = write_plots(resolve(query), args.plot)
        report["plots"] = [str(path) for path in written]
    if args.json:
        print(json.dumps(json_ready(report), indent=2, ensure_ascii=False, allow_nan=False))
        return 0
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or captured: keep the wide GPU table on one line per row
        console = Console(width=200)
    render(report, console)
    for path in written:
        console.print(f"wrote {path}")
    return 0
