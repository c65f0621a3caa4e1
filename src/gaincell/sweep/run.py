"""Design-space exploration: perplexity and chip cost over a grid of hardware points (``gaincell sweep``).

A hardware designer asks "how many ADC bits", "which window", "how much read noise can the model take".
gaincell has both halves, the simulated op with every knob (SPEC §3) and the cost model (SPEC §6); a
sweep joins them. One TOML file (:mod:`gaincell.sweep.spec`) names a saved model (gain-cell or
plain), an evaluation text and a grid (or list) of points over any
:class:`~gaincell.chip.config.GainCellConfig` field; per point :mod:`gaincell.sweep.worker` measures the
strided perplexity (as ``gaincell eval``), optionally after re-running the calibration loop of SPEC
§4.2 for that point, and the cost model's energy, latency and area per token for the model's shape.

Results are appended to ``results.jsonl``, one complete line per (point, chip seed), written with a
single ``write`` and fsync'd, so a killed sweep resumes and skips the points it finished; the
summary (``results.json``), ``report.md`` and the plots (:mod:`gaincell.sweep.report`) are
rewritten atomically at the end. Every line is a pure function of the spec (read noise is seeded
per point and seed), so a resumed sweep gives the same results as an uninterrupted one, in any
order and with any number of ``jobs``.

Each line carries the digest of the model folder's files it was measured on (:func:`model_digest`): a
model replaced at the same path, between two sweeps or between a kill and a resume, is measured again,
and the summary uses only the lines of the model as it is now (older lines stay in the file, never
mixed into a result). One sweep at a time writes an output folder (:func:`gaincell.lock.folder_lock`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

from gaincell.adaptation.state import file_digests
from gaincell.atomic import atomic_file
from gaincell.errors import GainCellError
from gaincell.jsonl import read_jsonl
from gaincell.lock import LOCK_FILE, folder_lock
from gaincell.sweep.dask_engine import dask_client, run_dask
from gaincell.sweep.report import write_outputs
from gaincell.sweep.spec import (
    SweepSpec,
    Unit,
    point_config,
    point_cost,
    read_spec,
    spec_from_dict,
    work_units,
)
from gaincell.sweep.worker import Evaluator, run_parallel
from gaincell.validation import check_choice

__all__ = ["SweepSpec", "Unit", "mark_pareto", "point_config", "point_cost", "read_spec", "run_sweep", "spec_from_dict"]


def read_results(path: Path) -> list[dict]:
    """The complete lines of a results file; a torn last line (a kill mid-write) is dropped and cut from the
    file, a damaged line before it refused (:func:`gaincell.jsonl.read_jsonl`)."""
    return read_jsonl(path, repair=True)


def model_digest(folder: str | os.PathLike) -> str:
    """A sha256 over the size and sha256 of every file of a saved model (dot files, such as a lock, left out)."""
    files = {name: entry for name, entry in file_digests(Path(folder).expanduser()).items() if not name.startswith(".")}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def check_records(records: list, path: Path) -> list[dict]:
    """Every line of a results file is a point's record (a JSON object with its ``key``): a line edited by hand
    or written by another tool is named, not a ``KeyError`` deep in the resume."""
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            shape = "has no 'key'" if isinstance(record, dict) else f"is a JSON {type(record).__name__}"
            raise GainCellError(
                f"{path}: line {number} {shape}, "
                "so it is no sweep point's record; remove the line or choose another --output"
            )
    return records


def append_result(path: Path, record: dict) -> None:
    """One line, one write, fsync'd: a kill leaves whole lines (at worst a torn last one, see above)."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare_output(spec: SweepSpec) -> Path:
    """Create the output folder, or check that an existing one holds this same sweep (to resume)."""
    out = Path(spec.output_dir)
    marker = out / "sweep.json"
    if out.exists() and not out.is_dir():
        raise GainCellError(f"output_dir: {out} exists and is not a directory")
    if marker.is_file():
        saved = json.loads(marker.read_text()).get("fingerprint")
        if saved != spec.fingerprint():
            raise GainCellError(
                f"output_dir: {out} holds a different sweep (its model, text, scoring or points changed); "
                "use another output_dir or delete it"
            )
        return out
    if out.is_dir() and any(entry.name != LOCK_FILE for entry in out.iterdir()):
        raise GainCellError(f"output_dir: {out} is not empty and holds no sweep; choose another")
    with atomic_file(marker) as handle:
        json.dump({"fingerprint": spec.fingerprint(), "spec": dataclasses.asdict(spec)}, handle, indent=2, default=str)
    return out


ENGINES = ("local", "dask")


def run_sweep(
    spec: SweepSpec,
    *,
    jobs: int | None = None,
    progress: bool = True,
    engine: str = "local",
    scheduler: str | None = None,
    dashboard: str | None = None,
) -> dict:
    """Run every point not yet in ``results.jsonl``, then write the summary, report and plots.

    ``engine = "local"`` runs them here or in ``jobs`` processes; ``"dask"`` on the Dask cluster at
    ``scheduler``, or on a local one of ``jobs`` workers (:mod:`gaincell.sweep.dask_engine`; private, with a
    dashboard only at ``dashboard``)."""

    jobs = spec.jobs if jobs is None else jobs
    check_choice("engine", engine, ENGINES)
    if scheduler is not None and engine != "dask":
        raise GainCellError(f"scheduler: only with engine dask, got engine {engine}")
    if dashboard is not None and (engine != "dask" or scheduler is not None):
        raise GainCellError("dashboard: only with engine dask on a local cluster (no scheduler)")
    with ExitStack() as stack:  # a missing dask or an unreachable scheduler fails before anything is written
        client = stack.enter_context(dask_client(jobs, scheduler, dashboard)) if engine == "dask" else None
        evaluator = Evaluator(spec)  # loads the model and texts: a bad model fails before anything is written
        model = model_digest(spec.model)
        out = prepare_output(spec)
        stack.enter_context(folder_lock(out, "output_dir", "gaincell sweep"))
        if spec.adapt:
            stale_adaptations(out, model)
        results_path = out / "results.jsonl"
        done = {
            record["key"]
            for record in check_records(read_results(results_path), results_path)
            if record.get("model") == model
        }
        todo = [unit for unit in work_units(spec) if unit.key not in done]
        start, measured = time.perf_counter(), 0
        bar = _progress(len(todo), progress)
        for record in _measure(spec, evaluator, todo, jobs, client, scheduler, model):
            append_result(results_path, {**record, "model": model})
            measured += 1
            bar.update()
        bar.close()
        records = current_records(read_results(results_path), model)
        summary = summarise(spec, records)
        wall = time.perf_counter() - start
        total = sum(record.get("seconds", 0.0) for record in records)
        note = f"{len(records)} units took {total:.1f} s in all (summed over processes); " + (
            f"this run measured {measured} in {wall:.1f} s wall with {_where(engine, jobs, scheduler)}"
            if measured
            else "this run measured none (the report is re-rendered from results.jsonl)"
        )
        write_outputs(spec, summary, out, note, adaptation_seconds(records))
        if (out / "adapt").is_dir() and not any(p.name != ADAPT_MODEL for p in (out / "adapt").iterdir()):
            shutil.rmtree(out / "adapt")  # every point's checkpoints went when it was measured
    return {**summary, "wall_seconds_this_run": wall, "jobs": jobs}


#: In ``<output_dir>/adapt``: the digest of the model the points' adaptation checkpoints started from.
ADAPT_MODEL = ".model-digest"


def stale_adaptations(out: Path, model: str) -> None:
    """Remove the killed points' adaptation checkpoints if they were trained from another model (or an
    unrecorded one), so a resumed point never continues from the old model's weights; record ``model``."""
    folder = out / "adapt"
    marker = folder / ADAPT_MODEL
    if folder.is_dir() and not (marker.is_file() and marker.read_text().strip() == model):
        for point in folder.glob("point-*-seed-*"):  # the checkpoints only: anything else there is kept
            shutil.rmtree(point)
    folder.mkdir(exist_ok=True)
    with atomic_file(marker) as handle:
        handle.write(model + "\n")


def current_records(records: list[dict], model: str) -> list[dict]:
    """The lines measured on the model as it is now (``model``: its digest), one per key (the last)."""
    return list({record["key"]: record for record in records if record.get("model") == model}.values())


def _measure(spec: SweepSpec, evaluator: Evaluator, todo: list[Unit], jobs: int, client, scheduler: str | None, model: str):
    """The records of ``todo``: the reference first, here, before any conversion; the points here, in
    ``jobs`` processes or on the Dask ``client``'s workers."""
    if todo and todo[0].index == -1:
        yield evaluator.evaluate(todo.pop(0))
    if client is not None and todo:
        yield from run_dask(client, spec, todo, None if scheduler else max(1, (os.cpu_count() or 1) // jobs), model)
    elif jobs > 1 and len(todo) > 1:
        yield from run_parallel(spec, todo, jobs)
    else:
        yield from (evaluator.evaluate(unit) for unit in todo)


def _where(engine: str, jobs: int, scheduler: str | None) -> str:
    if engine == "local":
        return f"{jobs} job(s)"
    return f"the Dask cluster at {scheduler}" if scheduler else f"a local Dask cluster of {jobs} worker(s)"


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep", unit="point", disable=not enabled or total == 0)


def summarise(spec: SweepSpec, records: list[dict]) -> dict:
    """One row per point: perplexity mean ± std over chip seeds, cost, and whether it is Pareto-optimal."""
    by_index: dict[int, list[dict]] = {}
    for record in records:
        by_index.setdefault(record["index"], []).append(record)
    rows = []
    for index in sorted(by_index):
        group = sorted(by_index[index], key=lambda r: r["seed"])
        ppl = [r["ppl"] for r in group]
        failed = next((r["failed"] for r in group if r.get("failed")), None)  # a NaN point is failed, not scored
        mean = None if failed else sum(ppl) / len(ppl)
        std = None if failed else math.sqrt(sum((p - mean) ** 2 for p in ppl) / (len(ppl) - 1)) if len(ppl) > 1 else 0.0
        first = group[0]
        rows.append(
            {
                "index": index,
                "point": first["point"],
                "leakage": first["leakage"],
                "own_hardware": first.get("own_hardware", False),
                "ppl_mean": mean,
                "ppl_std": std,
                "seeds": [r["seed"] for r in group],
                "ppl": ppl,
                "failed": failed,
                "cost": first["cost"],
                "calibration": [r["calibration"] for r in group] if spec.calibrate and index >= 0 else None,
                "adaptation": _adaptations(group) if spec.adapt and index >= 0 else None,
                "tasks": _task_means(group) if spec.tasks else None,
            }
        )
    mark_pareto([row for row in rows if row["index"] >= 0 and row["cost"] is not None and not row["failed"]])
    return {"fingerprint": spec.fingerprint(), "knobs": list(spec.knobs), "rows": rows}


def _adaptations(group: list[dict]) -> list[dict | None]:
    """What each seed's adaptation took, less its time (results.json is the same for any run)."""
    return [{k: v for k, v in (r.get("adaptation") or {}).items() if k != "seconds"} or None for r in group]


def _task_means(group: list[dict]) -> dict[str, float | None]:
    """Each task's main metric, the mean over the point's chip seeds (None where a seed has none)."""
    scores = [record["tasks"]["scores"] for record in group if record.get("tasks")]
    names = list(dict.fromkeys(name for score in scores for name in score))
    values = {name: [score.get(name) for score in scores] for name in names}
    return {name: None if None in v or not v else sum(v) / len(v) for name, v in values.items()}


def adaptation_seconds(records: list[dict]) -> dict[int, float]:
    """Seconds of adaptation per point, summed over its chip seeds (the time of the run that finished each)."""
    seconds: dict[int, float] = {}
    for record in records:
        if record.get("adaptation"):
            seconds[record["index"]] = seconds.get(record["index"], 0.0) + record["adaptation"]["seconds"]
    return seconds


#: The fronts a sweep marks: the row key set, and the cost it is traded against.
PARETO_COSTS = {"pareto": "energy_per_token_j", "pareto_area": "area_m2"}


def mark_pareto(rows: list[dict]) -> None:
    """Mark rows no other row beats in both perplexity and a cost (lower is better): energy per token
    (``pareto``) and chip area (``pareto_area``)."""
    for key, cost in PARETO_COSTS.items():
        best = math.inf
        for row in sorted(rows, key=lambda r: (r["cost"][cost], r["ppl_mean"])):
            row[key] = row["ppl_mean"] < best
            best = min(best, row["ppl_mean"])
