"""Measuring one sweep point: load once, then convert, calibrate (optionally) and score per point.

Kept apart from :mod:`gaincell.sweep.run` (which only reads specs and bookkeeps results) because this is
the half that needs torch and transformers; ``--jobs N`` runs it in N spawned processes, each with
its own model, one torch thread each unless there are spare cores.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import torch

from gaincell.adaptation.calibration import calibrate
from gaincell.adaptation.data import check_context, model_max_positions
from gaincell.adaptation.settings import CalibrationConfig
from gaincell.chip.config import GainCellConfig
from gaincell.devices import parse_device, parse_dtype
from gaincell.errors import GainCellError
from gaincell.evaluation.perplexity import strided_perplexity
from gaincell.hardware.constants import load_technology
from gaincell.hardware.models import load_shape
from gaincell.hf.convert import convert, model_config
from gaincell.hf.layer import gain_cell_layers
from gaincell.hf.pretrained import load, load_tokenizer
from gaincell.sweep.adapter import PointAdapter
from gaincell.sweep.downstream import score_tasks
from gaincell.sweep.inputs import read_text
from gaincell.sweep.spec import SweepSpec, Unit, point_config, point_cost


class Evaluator:
    """One model, its tokenizer and token streams, ready to measure any point of a spec."""

    def __init__(self, spec: SweepSpec):
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # its weight-loading bar would interleave with the sweep's
        self.spec = spec
        self.model = load(spec.model, device=parse_device(spec.device, "device"), dtype=parse_dtype(spec.dtype, "dtype"))
        self.tokenizer = load_tokenizer(spec.model)
        self.converted = getattr(self.model.config, "gaincell", None) is not None
        self.context = spec.context or model_max_positions(self.model) or 1024
        self.stride = spec.stride or max(1, self.context // 2)
        check_context(self.model, self.context, "context")
        tokens = self._tokens(spec.text)
        self.tokens = tokens[: spec.max_tokens] if spec.max_tokens else tokens
        if self.tokens.numel() < 2:
            raise GainCellError(f"text: {spec.text} encodes to fewer than 2 tokens")
        self.shape = load_shape(spec.model)
        self.tech = load_technology(spec.tech)
        self.initial: dict[str, torch.Tensor] | None = None
        self.own = model_config(self.model) if self.converted else None  # the hardware an adapted model was saved for
        self.adapter = PointAdapter(spec, self.tokenizer, self.model, self.context, self.own) if spec.adapt else None
        self.calibration_batch = self._calibration_batch(tokens) if spec.calibrate else None

    def _tokens(self, path: str) -> torch.Tensor:
        ids = self.tokenizer(read_text(path), add_special_tokens=False, verbose=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def _calibration_batch(self, tokens: torch.Tensor) -> torch.Tensor:
        """Blocks of ``context`` tokens that are not scored: ``calibration_text``, else the text after the
        scored prefix. Calibration needs the linear stage's targets (SPEC §4.1), checked here."""

        if not self.converted or any(int(cell.target_count) == 0 for cell in gain_cell_layers(self.model)):
            raise GainCellError(
                f"calibrate: model {self.spec.model} has no calibration targets (they are recorded by the linear "
                "stage, SPEC §4.1: gaincell adapt or the demo); set calibrate = false"
            )
        size = CalibrationConfig(**self.spec.calibration).batch_size
        if self.spec.calibration_text is not None:
            source, name = self._tokens(self.spec.calibration_text), "calibration_text"
        else:
            source, name = tokens[self.tokens.numel() :], "text"
        need = size * self.context
        if source.numel() < need:
            raise GainCellError(
                f"{name}: calibration needs {size} blocks of {self.context} tokens ({need}) that are not scored, "
                f"found {source.numel()}; give calibration_text = FILE or lower max_tokens"
            )
        return source[:need].view(size, self.context)

    def evaluate(self, unit: Unit) -> dict:
        """Measure one unit; the reference (index -1) is the model as loaded, before any conversion."""

        start = time.perf_counter()
        torch.manual_seed(_seed(unit.key))
        config = model_config(self.model) if unit.index < 0 and self.converted else None
        calibration = adaptation = None
        if unit.index >= 0:
            config = point_config(self.spec, unit.point, unit.seed)
            convert(self.model, config)
            self._restore_parameters()
            if self.adapter is not None and config.attention != "softmax":
                adaptation = self.adapter.adapt(self.model, config, unit, score=lambda: self._score(unit)["ppl"])
            if self.spec.calibrate and config.attention != "softmax":
                config_ = CalibrationConfig(**self.spec.calibration)
                result = calibrate(self.model, self.calibration_batch, config_, config, progress=False)
                calibration = {"iterations": result.iterations, "converged": result.converged,
                               "final_error": result.errors[-1] if result.errors else None, "loss": result.loss}  # fmt: skip
        scored = self._score(unit)
        record = {
            "key": unit.key,
            "index": unit.index,
            "point": unit.point,
            "seed": unit.seed,
            "leakage": None if config is None else config.leakage,
            "own_hardware": unit.index >= 0 and self.own is not None and same_hardware(config, self.own),
            "ppl": scored["ppl"] if math.isfinite(scored["ppl"]) else None,
            "nll": scored["nll"] if math.isfinite(scored["nll"]) else None,
            "failed": None if math.isfinite(scored["ppl"]) else f"perplexity is {scored['ppl']} (not a finite number)",
            "tokens": scored["tokens"],
            "context": self.context,
            "stride": self.stride,
            "calibration": calibration,
            "adaptation": adaptation,
            "tasks": score_tasks(self.model, self.tokenizer, self.spec.tasks) if self.spec.tasks else None,
            "cost": None if config is None else point_cost(self.shape, config, self.tech, self.spec.adc_cost),
            "seconds": time.perf_counter() - start,  # with adaptation.seconds, what differs between runs
        }
        if self.adapter is not None:
            self.adapter.finish(unit)
        return record

    def _score(self, unit: Unit) -> dict:
        torch.manual_seed(_seed(unit.key))  # read noise: the same draws whatever ran before
        return strided_perplexity(self.model, self.tokens, self.context, self.stride, self.spec.batch_size)

    def _restore_parameters(self) -> None:
        """Every point starts from the scalers the model was loaded (or first converted) with, and, where
        points are distilled, from its weights too: a point's model never depends on the points before it."""

        if self.adapter is not None and self.adapter.distill is not None:
            parameters = dict(self.model.named_parameters())
        else:
            parameters = {
                f"{cell.layer}.{name}": parameter
                for cell in gain_cell_layers(self.model)
                for name, parameter in cell.scalers.named_parameters()
            }
        with torch.no_grad():
            if self.initial is None:
                self.initial = {name: p.detach().clone() for name, p in parameters.items()}
            for name, parameter in parameters.items():
                parameter.copy_(self.initial[name])


def same_hardware(a: GainCellConfig, b: GainCellConfig) -> bool:
    """Equal configs up to float rounding (a retention time and token rate give ε = Δt/τ, not the
    literal) and the chip seed (a sweep sets its own)."""
    left, right = dict(_leaves(a.to_dict())), dict(_leaves(b.to_dict()))
    left.pop("noise.seed", None), right.pop("noise.seed", None)
    return left.keys() == right.keys() and all(_close(left[key], right[key]) for key in left)


def _leaves(value, path: str = ""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    else:
        yield path, value


def _close(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return math.isclose(x, y, rel_tol=1e-9)
    return x == y


def _seed(key: str) -> int:
    """The torch seed of a unit (read noise, calibration): a function of the unit alone, so any order,
    resume or process gives the same numbers."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:7], "big")


# -- processes ---------------------------------------------------------------------------------------

_EVALUATOR: Evaluator | None = None


def end_with_parent(parent: int, interval: float = 0.5) -> threading.Thread:
    """End this process once ``parent`` is gone: a ``kill -9`` of the sweep must not leave its workers
    running (a killed parent runs no clean-up, and a worker is reparented, so its parent id changes)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    watcher = threading.Thread(target=watch, name="end-with-parent", daemon=True)
    watcher.start()
    return watcher


def _start_worker(spec: SweepSpec, threads: int, parent: int) -> None:
    global _EVALUATOR
    end_with_parent(parent)
    torch.set_num_threads(threads)
    _EVALUATOR = Evaluator(spec)


def _evaluate_in_worker(unit: Unit) -> dict:
    return _EVALUATOR.evaluate(unit)


def run_parallel(spec: SweepSpec, units: list[Unit], jobs: int):
    """Yield the records of ``units`` as ``jobs`` spawned processes finish them (completion order)."""
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_start_worker, initargs=(spec, threads, os.getpid())
    ) as pool:
        pending = {pool.submit(_evaluate_in_worker, unit) for unit in units}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
