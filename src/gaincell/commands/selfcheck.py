"""``gaincell selfcheck``: the op against SPEC's equations, the step path against the parallel one, timing.

A short demonstration that needs no network and no data: random inputs, every preset, a table.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from gaincell.chip.config import PRESETS, preset
from gaincell.errors import GainCellError
from gaincell.op.attention import gain_cell_attention
from gaincell.op.memory import GainCellMemory
from gaincell.op.scalers import Scalers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--length", type=int, default=300, help="sequence length T (default 300)")
    parser.add_argument("--window", type=int, default=128, help="window M (default 128)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system: no limit known
        return None


def _check_memory(args: argparse.Namespace) -> None:
    """Refuse a shape this machine cannot hold before torch tries to allocate it. The bound is what surely
    exists, float32 inputs, outputs and their gradients (about 12 H·T·D values), so no run that fits is refused."""
    h, t, d = args.heads, args.length, args.head_dim
    needed = 4 * 12 * h * t * d
    available = _memory_bytes()
    if available is not None and needed > available:
        raise GainCellError(
            f"--length/--heads: T={t}, H={h}, D={d} need at least {needed / 1e9:,.1f} GB, more than this "
            f"machine's {available / 1e9:,.1f} GB of memory; use a smaller --length or --heads"
        )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    for name in ("length", "window", "heads", "head_dim"):
        if getattr(args, name) < 1:
            raise GainCellError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    _check_memory(args)
    torch.manual_seed(args.seed)
    shape = (1, args.heads, args.length, args.head_dim)
    q, k, v = torch.rand(shape), torch.rand(shape) - 0.5, torch.rand(shape) - 0.5
    table = Table(title=f"gain-cell attention, T={args.length}, M={args.window}, H={args.heads}, D={args.head_dim}")
    for column in ("preset", "output mean", "output std", "step vs parallel (max rel)", "forward ms", "fwd+bwd ms"):
        table.add_column(column, justify="right")
    for name in PRESETS:
        config = preset(name, window=args.window)
        scalers = Scalers(args.heads)
        with torch.no_grad():
            start = time.perf_counter()
            out = gain_cell_attention(q, k, v, scalers, config)
            forward_ms = 1e3 * (time.perf_counter() - start)
            memory = GainCellMemory(config, scalers, 1, args.heads, args.head_dim)
            steps = torch.cat(
                [memory.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1]) for t in range(args.length)],
                dim=2,
            )
        agreement = ((steps - out).abs().max() / out.abs().max()).item()
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        start = time.perf_counter()
        gain_cell_attention(*leaves, scalers, config).square().sum().backward()
        train_ms = 1e3 * (time.perf_counter() - start)
        stats = (f"{out.mean():.4f}", f"{out.std():.4f}", f"{agreement:.1e}", f"{forward_ms:.1f}", f"{train_ms:.1f}")
        table.add_row(name, *stats)
    Console().print(table)
    return 0
