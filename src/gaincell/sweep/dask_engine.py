"""Running a sweep's points on Dask distributed (``gaincell sweep --engine dask [--scheduler ADDRESS]``).

Dask rather than Ray or submitit: a point is one plain function call on a pickled spec, which is what
``Client.submit`` does; the same code runs on a :class:`~distributed.LocalCluster` (tests, one
machine), on workers started by hand (``dask scheduler`` / ``dask worker``) and on SLURM, PBS or
Kubernetes through dask-jobqueue / dask-kubernetes, with no service of its own to install. Ray would
add an object store and a runtime for nothing we use; submitit is SLURM only.

Each worker process builds one :class:`~gaincell.sweep.worker.Evaluator` (the model loaded once) on
its first point and keeps it; only the driver writes ``results.jsonl``: the records come back as
results, so workers need to read the model and texts (a shared filesystem) but write nothing. The
cache is keyed by the spec and by the content of the model (:func:`gaincell.sweep.run.model_digest`), so
a model folder replaced between two sweeps on one scheduler is read again, never scored from memory.

A Dask scheduler runs whatever code a connected client submits, so the local cluster is private: it
listens on loopback only, over TLS with a certificate made for this run
(``distributed.security.Security.temporary``, which needs ``cryptography``), and has no dashboard
unless asked (``--dashboard``). A process that does not hold this run's certificate cannot connect.
An external ``--scheduler`` is the user's: docs/sweep.md says how to secure one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gaincell.errors import GainCellError, first_line
from gaincell.sweep.adapt import ADAPT_PATHS
from gaincell.sweep.spec import SweepSpec, Unit

#: The Evaluator of this worker process, with the fingerprint of the spec it was built for.
_EVALUATOR: tuple[str, object] | None = None


def evaluate_on_worker(spec: SweepSpec, unit: Unit, threads: int | None, model: str | None = None) -> dict:
    """Measure one unit in a Dask worker, building (or rebuilding, for another sweep or another content of the
    model folder, ``model`` being its digest) its Evaluator."""
    global _EVALUATOR
    import torch

    from gaincell.sweep.worker import Evaluator

    if threads is not None:
        torch.set_num_threads(threads)
    key = f"{spec.fingerprint()}:{model}"
    if _EVALUATOR is None or _EVALUATOR[0] != key:
        _EVALUATOR = (key, Evaluator(spec))
    return _EVALUATOR[1].evaluate(unit)


@contextmanager
def dask_client(jobs: int, scheduler: str | None, dashboard: str | None = None) -> Iterator:
    """A client of the cluster at ``scheduler``, or of a new private local cluster of ``jobs`` worker processes
    (closed with the client): loopback, TLS with a temporary certificate, a dashboard only at ``dashboard``
    (``host:port``, or ``:port`` for loopback)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise GainCellError("--engine dask: needs dask distributed; pip install 'gaincell[dask]'") from None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError, ValueError) as error:
            raise GainCellError(f"--scheduler: cannot reach a Dask scheduler at {scheduler}: {first_line(error)}") from None
        client_log = logging.getLogger("distributed.client")
        level = client_log.level
        client_log.setLevel(logging.CRITICAL)  # its reconnect loop logs tracebacks; run_dask says it in one line
        try:
            with client:
                yield client
        finally:
            client_log.setLevel(level)
        return
    import dask

    security = _private_security()
    if dashboard is not None and dashboard.startswith(":"):
        dashboard = f"127.0.0.1{dashboard}"
    # Without a dashboard the scheduler still serves HTTP (default :8787, metrics and JSON pages about the
    # cluster): a random loopback port answering only a health check.
    http = {} if dashboard else {"dashboard": False, "dashboard_address": "127.0.0.1:0"}
    routes = None if dashboard else ["distributed.http.health"]
    with dask.config.set({"distributed.scheduler.http.routes": routes} if routes else {}):
        cluster = LocalCluster(
            n_workers=jobs,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            protocol="tls://",
            security=security,
            dashboard_address=dashboard,
            scheduler_kwargs=http,
        )
    with cluster, Client(cluster, security=security) as client:
        yield client


def _private_security():
    """TLS with a key and certificate made for this run only: a client needs them to connect."""
    from distributed.security import Security

    try:
        return Security.temporary()
    except ImportError:
        raise GainCellError(
            "--engine dask: the private local cluster needs the cryptography package for its TLS certificate; "
            "pip install 'gaincell[dask]'"
        ) from None


def run_dask(client, spec: SweepSpec, units: list[Unit], threads: int | None, model: str | None = None) -> Iterator[dict]:
    """Yield the records of ``units`` as the client's workers finish them (completion order).

    ``threads``: torch threads per worker (a local cluster: one per core and worker, as ``--jobs``);
    None keeps the workers' own setting (``OMP_NUM_THREADS`` where they are started)."""
    from concurrent.futures import CancelledError

    from distributed import as_completed
    from distributed.comm import CommClosedError

    spec = _absolute_paths(spec)
    futures = [client.submit(evaluate_on_worker, spec, unit, threads, model, pure=False) for unit in units]
    try:
        for future in as_completed(futures):
            yield future.result()
    except (CancelledError, CommClosedError) as error:  # the scheduler died or was stopped: no point can finish
        raise GainCellError(
            f"--scheduler: the Dask scheduler went away mid-run ({first_line(error)}); the points finished so far are "
            "kept in results.jsonl: start a scheduler and run the same command again to measure the rest"
        ) from None
    finally:
        client.cancel(futures)


def _absolute_paths(spec: SweepSpec) -> SweepSpec:
    """The spec with every path absolute: a worker's working folder is not the driver's."""

    def absolute(path: str | None) -> str | None:
        return None if path is None else str(Path(path).expanduser().resolve())

    adapt = spec.adapt and {**spec.adapt, **{k: absolute(spec.adapt[k]) for k in ADAPT_PATHS if k in spec.adapt}}
    paths = {name: absolute(getattr(spec, name)) for name in ("model", "text", "calibration_text", "output_dir")}
    return dataclasses.replace(spec, **paths, adapt=adapt)
