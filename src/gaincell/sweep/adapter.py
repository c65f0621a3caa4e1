"""Per-point adaptation in a sweep worker: initialise the scalers, optionally distil (:mod:`gaincell.sweep.adapt`).

Every point starts from the base model's own weights and scalers (the worker restores them), so a
point's model depends on the point and chip seed alone, never on the points measured before it in
that process. The distillation checkpoints under ``output_dir/adapt/<point>-<seed>/`` every
``checkpoint_every`` steps: a killed sweep finishes the point from its last checkpoint (the training
loop resumes exactly, :mod:`gaincell.adaptation.train`); the folder is removed once the point is measured.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import shutil
import time
from pathlib import Path

import torch

from gaincell.adaptation.data import check_context, pack_blocks
from gaincell.adaptation.initialise import initialise_scalers, remap_scalers
from gaincell.adaptation.state import latest_checkpoint
from gaincell.adaptation.transfer import distill_stage, make_teacher
from gaincell.chip.config import GainCellConfig
from gaincell.errors import GainCellError
from gaincell.hf.pretrained import load
from gaincell.sweep.adapt import distill_config, initialise_config
from gaincell.sweep.inputs import read_text
from gaincell.sweep.spec import SweepSpec, Unit


class PointAdapter:
    """The teacher, the adaptation text's blocks and settings of one sweep, ready for any point."""

    def __init__(self, spec: SweepSpec, tokenizer, model, context: int, trained: GainCellConfig | None = None):
        """``trained``: the adapted model's own hardware, which its scalers were trained for (``remap``)."""
        adapt = spec.adapt
        self.output = Path(spec.output_dir) / "adapt"
        self.teacher = make_teacher(load(adapt["teacher"]), "full", None)  # plain: the statistics' reference
        self.windowed = None  # the sliding-window softmax teacher of a distillation, made on first use
        block_size = adapt["block_size"] or context
        check_context(model, block_size, "adapt.block_size")
        self.initialise = initialise_config(adapt)
        self.trained = trained if adapt["scalers"] == "remap" else None
        # statistics blocks only where the scalers start from statistics; each text tokenised once
        self.blocks = None if self.trained is not None else self._blocks(tokenizer, adapt["text"], block_size, "adapt.text")
        self.distill = None
        if adapt["distill_tokens"] > 0:
            distill_text = adapt.get("distill_text", adapt["text"])
            reuse = self.blocks is not None and distill_text == adapt["text"]
            train_blocks = self.blocks if reuse else self._blocks(tokenizer, distill_text, block_size, "adapt.text")
            batch = distill_config(adapt, 1).batch_size
            steps = math.ceil(adapt["distill_tokens"] / (batch * block_size))
            self.distill = (distill_config(adapt, steps), train_blocks)
            if len(train_blocks) < batch:
                raise GainCellError(
                    f"adapt.distill.batch_size: the text gives {len(train_blocks)} blocks of {block_size} tokens, "
                    f"fewer than one batch of {batch}; give more text or a smaller batch_size or block_size"
                )

    @staticmethod
    def _blocks(tokenizer, path: str, block_size: int, name: str) -> torch.Tensor:
        ids = tokenizer(read_text(path, name), add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) < block_size:
            raise GainCellError(f"{name}: {path} has {len(ids)} tokens, fewer than one block of {block_size}")
        return pack_blocks(ids, block_size)

    def adapt(self, model, config: GainCellConfig, unit: Unit, score=None) -> dict:
        """Start the scalers of ``model`` (converted to ``config``) and distil it; returns what it took.

        The scalers start from the original model's statistics (a plain base model), or from the
        adapted base model's own trained scalers re-expressed for ``config``'s DAC ranges: statistics
        of the original weights would undo the adaptation (measured on stories260K: perplexity 6.9
        at the model's own point became 317 after re-initialisation). ``score()``, when given, is the
        point's perplexity, recorded before the distillation as ``ppl_start``.
        """
        start = time.perf_counter()
        if self.trained is not None:
            remap_scalers(model, self.trained, config)
            statistics_tokens = 0
        else:
            statistics_tokens = initialise_scalers(model, self.teacher, self.blocks, self.initialise)["statistics_tokens"]
        record = {"statistics_tokens": statistics_tokens, "distill_steps": 0, "distill_tokens": 0}
        if self.distill is not None:
            if score is not None:
                record["ppl_start"] = score()
            settings, train_blocks = self.distill
            folder = self.folder(unit)
            resume = latest_checkpoint(folder) is not None
            teacher = self._teacher(settings.teacher, config)
            with contextlib.redirect_stdout(io.StringIO()):  # its start line would break the sweep's progress bar
                result = distill_stage(model, teacher, train_blocks, None, settings, config, folder, resume=resume)
            tokens = result.step * settings.batch_size * settings.grad_accum * int(train_blocks.shape[1])
            record |= {"distill_steps": result.step, "distill_tokens": tokens, "distill_loss": result.loss}
        record["tokens"] = record["statistics_tokens"] + record["distill_tokens"]
        return {**record, "seconds": time.perf_counter() - start}

    def _teacher(self, kind: str, config: GainCellConfig):
        """The distillation's teacher: the original model, or it restricted to this point's window."""
        if kind == "full":
            return self.teacher
        if self.windowed is None:
            self.windowed = copy.deepcopy(self.teacher)
        return make_teacher(self.windowed, "window", config)

    def folder(self, unit: Unit) -> Path:
        return self.output / f"point-{unit.index}-seed-{unit.seed}"

    def finish(self, unit: Unit) -> None:
        """The point is measured: its checkpoints are no longer needed."""
        shutil.rmtree(self.folder(unit), ignore_errors=True)
