"""``gaincell sweep CONFIG``: perplexity and chip cost over a grid of hardware points (:mod:`gaincell.sweep.run`)."""

from __future__ import annotations

import argparse
import json
import sys

from gaincell import devices
from gaincell.errors import GainCellError
from gaincell.sweep.run import read_spec, run_sweep


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``gaincell sweep``; everything else is in the TOML file (see examples/sweep-stories260K.toml)."""
    parser.add_argument("config", metavar="CONFIG", help="the sweep's TOML file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set max_tokens=2048 --set grid.window=[64,128] (TOML values)",
    )
    parser.add_argument("--jobs", type=int, metavar="N", help="run points in N processes (default: the file's, else 1)")
    parser.add_argument(
        "--engine",
        choices=["local", "dask"],
        default="local",
        help="where points run: here or in --jobs processes (local), or on Dask distributed (dask)",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="with --engine dask: a running Dask scheduler (tcp://host:8786); default: a local cluster of --jobs workers",
    )
    parser.add_argument(
        "--dashboard",
        metavar="[HOST]:PORT",
        help="with --engine dask on a local cluster: serve Dask's dashboard there (':8787' is loopback only; "
        "default: none, the cluster is private: loopback, TLS with a certificate made for this run)",
    )
    parser.add_argument("--output", metavar="DIR", help="output folder (default: the file's output_dir)")
    devices.add_arguments(parser, f"the model's weights: {' | '.join(devices.DTYPES)} (default: the file's, else float32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Validate the whole sweep first (nothing is written if it is wrong), then run and report."""
    import dataclasses

    overrides = list(args.set)  # --device / --dtype are the file's device / dtype, checked with the rest
    overrides += [f"{name}={json.dumps(getattr(args, name))}" for name in ("device", "dtype") if getattr(args, name)]
    spec = read_spec(args.config, overrides)
    if args.jobs is not None and args.jobs < 1:
        raise GainCellError(f"--jobs: an integer >= 1, got {args.jobs}")
    if args.scheduler is not None and args.engine != "dask":
        raise GainCellError(f"--scheduler: only with --engine dask, got --engine {args.engine}")
    if args.dashboard is not None and (args.engine != "dask" or args.scheduler is not None):
        raise GainCellError("--dashboard: only with --engine dask on a local cluster (without --scheduler)")
    if args.output:
        spec = dataclasses.replace(spec, output_dir=args.output)
    summary = run_sweep(
        spec,
        jobs=args.jobs,
        progress=not args.no_progress,
        engine=args.engine,
        scheduler=args.scheduler,
        dashboard=args.dashboard,
    )
    points = sum(1 for row in summary["rows"] if row["index"] >= 0)
    front = sum(1 for row in summary["rows"] if row.get("pareto"))
    print(
        f"{points} points ({front} on the Pareto front) in {summary['wall_seconds_this_run']:.1f} s this run; "
        f"report: {spec.output_dir}/report.md"
    )
    failed = [str(row["index"]) for row in summary["rows"] if row.get("failed")]
    if failed:  # recorded and reported, but a sweep with a NaN point did not succeed
        print(
            f"gaincell sweep: {len(failed)} point(s) failed (not a finite perplexity): {', '.join(failed)}", file=sys.stderr
        )
        return 1
    return 0
