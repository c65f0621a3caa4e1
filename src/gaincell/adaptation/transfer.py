"""Attention transfer and logit distillation (SPEC §4.4, ours): adaptation with far fewer tokens.

- **Attention transfer** (Hedgehog; LoLCATs): every layer's gain-cell attention is trained, alone,
  to reproduce the original softmax attention's output (after the output projection) on the same
  layer inputs. One forward of the frozen teacher records every layer's inputs and outputs
  (:func:`gaincell.hf.taps.capture_attention_io`); each student attention module is run on its
  layer's recorded inputs, and the loss is the mean over layers of the relative MSE
  ``|y_student − y_teacher|² / |y_teacher|²``. Inputs are detached, so layers are independent and
  all are trained at once for the price of one teacher forward. What may change is
  ``transfer.parameters``: ``"attention"`` (the q/k/v/o projections and the scalers) or
  ``"scalers"`` (the per-head scalers only).
- **Distillation**: end-to-end fine-tuning of the whole student on
  ``kd_weight · T² · KL(teacher ‖ student at temperature T) + lm_weight · LM loss``, with the
  teacher's logits computed on the fly (memory bounded by one batch of logits, nothing cached).

Both are :class:`torch.nn.Module` wrappers whose ``forward(input_ids, labels)`` returns ``.loss``,
so they run in :func:`gaincell.adaptation.train.train` unchanged: accelerate (DDP/FSDP), checkpoints, exact
resume, logs and progress bars. The teacher is held outside the module tree: it is not trained, not
wrapped by DDP and not written into checkpoints. In evaluation mode both report the quantity that
matters for comparison: the transfer MSE, resp. the student's plain LM loss.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import torch
from torch import nn

from gaincell.adaptation.settings import DistillConfig, TransferConfig
from gaincell.adaptation.train import TrainResult, train
from gaincell.chip.config import CellConfig, GainCellConfig, preset
from gaincell.errors import GainCellError
from gaincell.hf.convert import attention_modules, convert, model_config
from gaincell.hf.taps import capture_attention_io, replay


def make_teacher(pretrained, kind: str, hardware: GainCellConfig):
    """The frozen model the student imitates: the pre-trained one, or it as sliding-window softmax."""
    if getattr(pretrained.config, "gaincell", None) is not None and model_config(pretrained).attention != "softmax":
        raise GainCellError("teacher: the pre-trained model is already converted to gain-cell attention")
    if kind == "window":
        convert(pretrained, preset("softmax", window=hardware.window))
    for parameter in pretrained.parameters():
        parameter.requires_grad_(False)
    return pretrained.eval()


class _Teacher:
    """Holds the teacher outside the module tree and moves it to the inputs' device once."""

    def __init__(self, teacher) -> None:
        self.model = teacher

    def on(self, device: torch.device):
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        return self.model


def transfer_loss(output: torch.Tensor, target: torch.Tensor, kind: str = "relative") -> torch.Tensor:
    """One layer's transfer loss: its squared error over the teacher output's mean square (``relative``,
    the default) or over its variance per channel, the mean over tokens removed (``variance``: a layer
    whose output is mostly a constant vector is not let off by that constant's size)."""
    error = (output - target).square().mean()
    if kind == "variance":
        flat = target.reshape(-1, target.shape[-1])
        return error / flat.var(dim=0, unbiased=False).mean().clamp_min(1e-12)
    return error / target.square().mean().clamp_min(1e-12)


class AttentionTransfer(nn.Module):
    """The student's attention layers, trained to reproduce the teacher's on the teacher's inputs."""

    def __init__(self, student, teacher, loss: str = "relative") -> None:
        super().__init__()
        self.student = student
        self.teacher = _Teacher(teacher)
        self.config = student.config
        self.loss = loss
        self.layer_losses: list[float] = []

    def forward(self, input_ids: torch.Tensor, labels=None, position_ids=None, **_) -> SimpleNamespace:
        teacher = self.teacher.on(input_ids.device)
        with torch.no_grad(), capture_attention_io(teacher) as calls:  # the layers only: no logits needed
            teacher.base_model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        modules = attention_modules(self.student)
        losses = torch.stack([transfer_loss(replay(m, c), c.output, self.loss) for m, c in zip(modules, calls, strict=True)])
        self.layer_losses = losses.detach().tolist()
        return SimpleNamespace(loss=losses.mean())


class Distillation(nn.Module):
    """The whole student, trained on the teacher's logits (KL at a temperature) plus the LM loss."""

    def __init__(self, student, teacher, config: DistillConfig) -> None:
        super().__init__()
        self.student = student
        self.teacher = _Teacher(teacher)
        self.config = student.config
        self.weights = (config.kd_weight, config.lm_weight, config.temperature)

    def forward(self, input_ids: torch.Tensor, labels=None, position_ids=None, **_) -> SimpleNamespace:
        output = self.student(input_ids=input_ids, labels=labels, position_ids=position_ids)
        if not self.training:
            return output
        kd_weight, lm_weight, temperature = self.weights
        with torch.no_grad():
            target = self.teacher.on(input_ids.device)(input_ids=input_ids, position_ids=position_ids, use_cache=False)
            target = target.logits
        log_student = torch.log_softmax(output.logits.float() / temperature, dim=-1)
        log_teacher = torch.log_softmax(target.float() / temperature, dim=-1)
        kd = (log_teacher.exp() * (log_teacher - log_student)).sum(-1).mean() * temperature**2
        return SimpleNamespace(loss=kd_weight * kd + lm_weight * output.loss, logits=output.logits)


@contextmanager
def trainable_only(model, parameters: list[nn.Parameter]):
    """Inside the block only ``parameters`` of ``model`` take gradients; afterwards all of them do."""
    chosen = {id(p) for p in parameters}
    previous = {id(p): p.requires_grad for p in model.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in chosen)
    try:
        yield
    finally:
        for parameter in model.parameters():
            parameter.requires_grad_(previous[id(parameter)])


def transfer_parameters(student, which: str) -> list[nn.Parameter]:
    """What attention transfer may change: the attention modules whole, or their scalers only."""
    modules = attention_modules(student)
    if which == "scalers":
        return [p for module in modules for p in module.gaincell.scalers.parameters()]
    return [p for module in modules for p in module.parameters()]


def prepare_transfer(student, config: TransferConfig, hardware: GainCellConfig):
    """The student as attention transfer trains it: on ``hardware`` or its linear model (``config.cells``)."""
    linear = hardware.replace(attention="gaincell", cell=CellConfig(kind="linear"))  # SPEC §3.3, as adapt.linear_config
    convert(student, linear if config.cells == "linear" else hardware)
    return student


def transfer_stage(
    student, teacher, train_data, eval_data, config: TransferConfig, hardware: GainCellConfig, output_dir, **kwargs
) -> TrainResult:
    """Per-layer attention transfer of ``student`` (converted to ``hardware`` or its linear model)."""
    prepare_transfer(student, config, hardware)
    wrapper = AttentionTransfer(student, teacher, config.loss)
    with trainable_only(student, transfer_parameters(student, config.parameters)):
        result = train(wrapper, train_data, eval_data, config, output_dir, **kwargs)
    result.model = student
    return result


def distill_stage(
    student, teacher, train_data, eval_data, config: DistillConfig, hardware: GainCellConfig, output_dir, **kwargs
) -> TrainResult:
    """End-to-end fine-tuning of the student on the chip's config against the teacher's logits."""
    convert(student, hardware)
    result = train(Distillation(student, teacher, config), train_data, eval_data, config, output_dir, **kwargs)
    result.model = student
    return result
