"""Time and peak memory of gain-cell attention: gaincell vs the dense formulation vs torch SDPA.

Prints one JSON object. Each (method, T, pass) case runs in a fresh subprocess so its peak memory
is clean: peak RSS during the timed calls minus RSS once the inputs exist (CPU), or
``torch.cuda.max_memory_allocated`` (CUDA). Methods, all causal with window M:

- ``gaincell``: :func:`gaincell.gain_cell_attention`, ``paper`` preset (banded, recomputing backward);
- ``dense``: the same model written the way the authors' simulation does it — full T×T scores, a
  T×T leakage matrix, one matmul per polynomial order, per-sub-tile ADC on T×T weights, autograd;
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with a T×T sliding-window mask.

Usage: ``python benchmarks/bench_attention.py [--quick] [--device cpu|cuda] [--dtype bfloat16] [--repeats 3]``;
a recorded run goes in a folder of its own, ``> benchmarks/results/bench-attention-MACHINE/results.json``
(``bench-attention-2core-cpu``, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from gaincell import Scalers, gain_cell_attention, preset
from gaincell.chip.cells import build_cell
from gaincell.chip.periphery import quantize_ste
from gaincell.devices import parse_device, parse_dtype, synchronize
from gaincell.op.equations import front_end


def dense_gain_cell_attention(q, k, v, scalers, config):
    """The naive dense formulation: O(T²) time and memory (for comparison only)."""
    pulses, keys, values = front_end(q, k, v, scalers, config)
    length = q.shape[2]
    betas = build_cell(config.cell).coefficients
    positions = torch.arange(length, device=q.device)
    age = positions[:, None] - positions[None, :]
    mask = ((age >= 0) & (age < config.window)).to(q.dtype)
    leak = torch.exp(-config.leakage * age.clamp(min=0).to(q.dtype)) * mask  # T×T leakage matrix
    scores = betas[0] * pulses.sum(-1, keepdim=True) * mask
    for power in range(1, len(betas)):
        scores = scores + betas[power] * (pulses @ (keys**power).transpose(-1, -2)) * leak**power
    phi = (scores / config.periphery.s_sat).clamp(0, 1) * mask
    rows = config.subtile_rows
    chunks = -(-length // rows)
    pad = chunks * rows - length
    partial = 0
    for power in range(len(betas)):
        weights = F.pad(phi * leak**power, (0, pad)).unflatten(-1, (chunks, rows))  # (B,H,T,C,R)
        stored = F.pad(values**power, (0, 0, 0, pad)).unflatten(-2, (chunks, rows))  # (B,H,C,R,D)
        partial = partial + betas[power] * torch.einsum("bhtcr,bhcrd->bhctd", weights, stored)
    subtile = (torch.arange(chunks, device=q.device) * rows % config.window) // rows
    occupied = mask.view(length, 1, length) if pad == 0 else F.pad(mask, (0, pad)).view(length, 1, -1)
    occupied = occupied.unflatten(-1, (chunks, rows)).any(-1).squeeze(1).T  # (C, T)
    readout = torch.zeros(*partial.shape[:2], config.n_subtiles, length, q.shape[-1], dtype=q.dtype, device=q.device)
    readout = readout.index_add(2, subtile, partial) * config.periphery.readout_gain
    tile_occupied = torch.zeros(config.n_subtiles, length, device=q.device).index_add(0, subtile, occupied.float()) > 0
    out = (quantize_ste(readout, config.periphery.adc) * tile_occupied[:, :, None]).sum(2)
    return scalers.apply("o", out)


def sdpa_window(q, k, v, window):
    positions = torch.arange(q.shape[2], device=q.device)
    age = positions[:, None] - positions[None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=(age >= 0) & (age < window))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def run_case(
    method: str, length: int, backward: bool, repeats: int, device: str, heads, dim, window, dtype: str = "float32"
) -> dict:
    torch.manual_seed(0)
    torch.set_grad_enabled(backward)
    config = preset("paper", window=window)
    shape = (1, heads, length, dim)
    device = parse_device(device)
    q, k, v = (torch.rand(shape, device=device).to(parse_dtype(dtype)).requires_grad_(backward) for _ in range(3))
    scalers = Scalers(heads).to(device)
    call = {
        "gaincell": lambda: gain_cell_attention(q, k, v, scalers, config),
        "dense": lambda: dense_gain_cell_attention(q, k, v, scalers, config),
        "sdpa": lambda: sdpa_window(q, k, v, window),
    }[method]
    times = []
    base = _rss_bytes()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    for _ in range(repeats + 1):  # the first call is a warm-up
        start = time.perf_counter()
        out = call()
        if backward:
            out.sum().backward()
        synchronize(device)
        times.append(time.perf_counter() - start)
        del out
        for x in (q, k, v):
            x.grad = None
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"seconds": statistics.median(times[1:]), "peak_bytes": max(peak, 0), "runs": times[1:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T in {512, 1024} only")
    parser.add_argument("--lengths", type=int, nargs="*", help="sequence lengths (default 512..4096)")
    parser.add_argument("--methods", nargs="*", default=["gaincell", "dense", "sdpa"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default: cpu)")
    parser.add_argument("--dtype", default="float32", help="the inputs' dtype: float32 | bfloat16 | float16")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--case", nargs=3, metavar=("METHOD", "T", "PASS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.heads, args.head_dim, args.window)
    if args.case:
        method, length, which = args.case
        if which not in ("fwd", "fwd+bwd", "fwdbwd"):
            parser.error(f"--case PASS must be fwd or fwd+bwd (alias fwdbwd), got {which!r}")
        print(json.dumps(run_case(method, int(length), which != "fwd", args.repeats, args.device, *shape, args.dtype)))
        return
    parse_device(args.device), parse_dtype(args.dtype)  # a device this machine lacks: one line, before any case runs
    lengths = args.lengths or ([512, 1024] if args.quick else [512, 1024, 2048, 4096])
    results = {}
    for length in lengths:
        for which in ("fwd", "fwd+bwd"):
            for method in args.methods:
                command = [
                    sys.executable,
                    __file__,
                    "--case",
                    method,
                    str(length),
                    which,
                    "--repeats",
                    str(args.repeats),
                    "--device",
                    args.device,
                    "--dtype",
                    args.dtype,
                    "--heads",
                    str(args.heads),
                    "--head-dim",
                    str(args.head_dim),
                    "--window",
                    str(args.window),
                ]
                done = subprocess.run(command, capture_output=True, text=True)
                key = f"{method}/T={length}/{which}"
                if done.returncode != 0:
                    results[key] = {"error": done.stderr.strip().splitlines()[-1:]}
                else:
                    results[key] = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{key}: {results[key]}", file=sys.stderr, flush=True)
    ratios = {}
    for length in lengths:
        for which in ("fwd", "fwd+bwd"):
            ours = results.get(f"gaincell/T={length}/{which}", {})
            for other in ("dense", "sdpa"):
                theirs = results.get(f"{other}/T={length}/{which}", {})
                if "seconds" in ours and "seconds" in theirs:
                    ratios[f"T={length}/{which}/{other}_time_over_gaincell"] = theirs["seconds"] / ours["seconds"]
                    if ours["peak_bytes"]:
                        ratios[f"T={length}/{which}/{other}_memory_over_gaincell"] = (
                            theirs["peak_bytes"] / ours["peak_bytes"]
                        )
    base = args.window if args.window in lengths[:-1] else min(lengths)  # growth past the window shows linearity
    for which in ("fwd", "fwd+bwd"):
        small = results.get(f"gaincell/T={base}/{which}", {}).get("peak_bytes")
        large = results.get(f"gaincell/T={max(lengths)}/{which}", {}).get("peak_bytes")
        if small and large:
            ratios[f"gaincell_memory_T={max(lengths)}_over_T={base}/{which}"] = large / small
    print(
        json.dumps(
            {
                "config": {
                    "heads": args.heads,
                    "head_dim": args.head_dim,
                    "window": args.window,
                    "batch": 1,
                    "preset": "paper",
                    "device": args.device,
                    "dtype": args.dtype,
                    "repeats": args.repeats,
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "machine": platform.machine(),
                },
                "results": results,
                "ratios": ratios,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
