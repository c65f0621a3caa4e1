"""``gaincell selfcheck``: every fast form of the op against SPEC's equations on this machine, with timings.

A short check that needs no network and no data: random inputs, every preset. Each fast form (the
parallel op through each kernel the dispatcher offers, and the generation step) is held to
:func:`gaincell.op.equations.gain_cell_attention_equations` by the rule of :mod:`gaincell.op.agreement`
(printed with its numbers); one PASS or FAIL line closes the output, and a FAIL exits 1. Timings are
medians over ``--repeats`` calls after one untimed warm-up call, with the device synchronised.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gaincell import devices
from gaincell.chip.config import PRESETS, preset
from gaincell.errors import GainCellError, first_line
from gaincell.op.agreement import agreement
from gaincell.op.attention import gain_cell_attention
from gaincell.op.equations import gain_cell_attention_equations
from gaincell.op.memory import GainCellMemory
from gaincell.op.scalers import Scalers

#: The parallel op's kernels tried on every preset (:mod:`gaincell.op.kernels.dispatch`).
KERNELS = ("torch", "triton")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--length", type=int, default=300, help="sequence length T (default 300)")
    parser.add_argument("--window", type=int, default=128, help="window M (default 128)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per figure, after one warm-up (default 3)")
    devices.add_arguments(parser, "the inputs' dtype: float32 | bfloat16 | float16 (the op computes in float32)")


def _check_memory(args: argparse.Namespace) -> None:
    """Refuse a shape this machine cannot hold before torch tries to allocate it. The bound is what surely
    exists, float32 inputs, outputs and their gradients (about 12 H·T·D values) and the equations' T×T
    scores and pulse widths (2 H·T² values), so no run that fits is refused."""
    h, t, d = args.heads, args.length, args.head_dim
    needed = 4 * (12 * h * t * d + 2 * h * t * t)
    devices.check_fits("--length/--heads", f"T={t}, H={h}, D={d}", needed, hint="use a smaller --length or --heads")


def milliseconds(call, device: torch.device, repeats: int) -> float:
    """Median wall time of ``call`` in ms over ``repeats`` calls, after one untimed warm-up call (first-call
    allocations, cached schedules, kernel compilation), each ended by a device synchronisation."""
    call()
    devices.synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        devices.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _train(q, k, v, scalers, config, kernel: str | None) -> None:
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    gain_cell_attention(*leaves, scalers, config, kernel=kernel).float().square().sum().backward()


def _steps(q, k, v, scalers, config) -> torch.Tensor:
    batch, heads, length, dim = q.shape
    stored = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32  # as hf.cache makes it
    memory = GainCellMemory(config, scalers, batch, heads, dim, device=q.device, dtype=stored)
    with torch.no_grad():
        return torch.cat([memory.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1]) for t in range(length)], 2)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    for name in ("length", "window", "heads", "head_dim", "repeats"):
        if getattr(args, name) < 1:
            raise GainCellError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    device, dtype = devices.parse_device(args.device), devices.parse_dtype(args.dtype) or torch.float32
    _check_memory(args)
    torch.manual_seed(args.seed)
    shape = (1, args.heads, args.length, args.head_dim)
    q = torch.rand(shape, device=device).to(dtype)
    k, v = ((torch.rand(shape, device=device) - 0.5).to(dtype) for _ in range(2))
    rows = []
    for name in PRESETS:
        rows += _check_preset(name, args, q, k, v, device)
    title = f"gain-cell attention on {device}, {str(dtype).removeprefix('torch.')} inputs, T={args.length}, "
    table = Table(title=title + f"M={args.window}, H={args.heads}, D={args.head_dim}")
    for column in ("preset", "form", "vs equations", "", "forward ms", "fwd+bwd ms"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row["cells"])
    console = Console() if Console().is_terminal else Console(width=160)  # piped: one line per row
    console.print(table)
    checked = [row for row in rows if "passed" in row]
    failed = [row for row in checked if not row["passed"]]
    for rule in dict.fromkeys(row["rule"] for row in checked):
        console.print(f"tolerance: {rule}")
    if failed:
        names = ", ".join(f"{row['cells'][0]}/{row['cells'][1]}" for row in failed)
        console.print(f"selfcheck: FAIL: {names} outside the tolerance against the SPEC equations")
        return 1
    console.print(f"selfcheck: PASS: {len(checked)} forms agree with the SPEC equations (op/equations.py)")
    return 0


def _check_preset(name: str, args, q, k, v, device: torch.device) -> list[dict]:
    """One row per fast form of preset ``name``: the parallel op through each kernel, then the step."""
    config = preset(name, window=args.window)
    scalers = Scalers(args.heads).to(device)
    with torch.no_grad():
        reference = gain_cell_attention_equations(q.float(), k.float(), v.float(), scalers, config)
    forms = [("softmax", None)] if name == "softmax" else [(f"parallel ({kernel})", kernel) for kernel in KERNELS]
    rows = []
    for form, kernel in forms:
        try:
            with torch.no_grad():
                out = gain_cell_attention(q, k, v, scalers, config, kernel=kernel)
        except GainCellError as error:
            rows.append({"cells": (name, form, f"unavailable: {first_line(error)}", "", "", "")})
            continue
        rows.append(_row(name, form, out, reference, config, args, device, kernel, (q, k, v, scalers)))
    if name != "softmax":
        out = _steps(q, k, v, scalers, config)
        rows.append(_row(name, "step", out, reference, config, args, device, None, (q, k, v, scalers)))
    return rows


def _row(name, form, out, reference, config, args, device, kernel, inputs) -> dict:
    check = agreement(out, reference, config)
    q, k, v, scalers = inputs
    if form == "step":
        timings = (f"{milliseconds(lambda: _steps(q, k, v, scalers, config), device, 1):.1f} ({args.length} steps)", "")
    else:
        with torch.no_grad():
            forward = milliseconds(
                lambda: gain_cell_attention(q, k, v, scalers, config, kernel=kernel), device, args.repeats
            )
        train = milliseconds(lambda: _train(q, k, v, scalers, config, kernel), device, args.repeats)
        timings = (f"{forward:.1f}", f"{train:.1f}")
    verdict = "PASS" if check.passed else "FAIL"
    return {"cells": (name, form, check.summary(), verdict, *timings), "passed": check.passed, "rule": check.rule}
