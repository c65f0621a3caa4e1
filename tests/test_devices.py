"""One reading of ``--device`` and ``--dtype`` (gaincell.devices): what each name means, and one line
naming the option for a device this machine lacks."""

import pytest
import torch

from gaincell import GainCellError
from gaincell.devices import mixed_precision, model_device, parse_device, parse_dtype


def test_auto_is_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parse_device(None) == parse_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parse_device("auto") == torch.device("cuda")


def test_cuda_without_cuda_is_one_line_naming_the_option(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GainCellError, match=r"^--device cuda: this machine has no CUDA GPU .*; use --device cpu$"):
        parse_device("cuda")
    with pytest.raises(GainCellError, match=r"^device cuda:1: this machine has no CUDA GPU"):
        parse_device("cuda:1", "device")


def test_a_cuda_index_past_the_last_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert parse_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(GainCellError, match=r"^--device cuda:1: this machine has 1 CUDA GPU"):
        parse_device("cuda:1")


@pytest.mark.parametrize("name", ["abacus", "cuda:x", ""])
def test_a_name_torch_does_not_know_is_refused(name):
    with pytest.raises(GainCellError, match=r"^--device must be auto, cpu, cuda or cuda:N, got"):
        parse_device(name)


def test_dtypes_by_name_and_short_name():
    assert parse_dtype(None) is None
    assert parse_dtype("bfloat16") is parse_dtype("bf16") is torch.bfloat16
    assert parse_dtype("fp16") is torch.float16 and parse_dtype("float32") is torch.float32
    with pytest.raises(
        GainCellError, match=r"^--dtype must be one of float32, bfloat16, float16, fp32, bf16, fp16, got 'int8'$"
    ):
        parse_dtype("int8")


def test_a_training_runs_dtype_is_accelerates_mixed_precision():
    assert [mixed_precision(name) for name in (None, "auto", "float32", "bf16", "float16")] == [
        "auto",
        "auto",
        "no",
        "bf16",
        "fp16",
    ]
    with pytest.raises(GainCellError, match="^--dtype must be one of"):
        mixed_precision("float64")


def test_model_device_is_where_the_weights_are():
    assert model_device(torch.nn.Linear(2, 2).to("meta")) == torch.device("meta")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")
