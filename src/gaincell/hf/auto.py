"""transformers' Auto classes for a saved gain-cell model (the ``gaincell`` architecture, :mod:`gaincell.hf.architecture`).

A saved folder's ``auto_map`` names these two classes through its ``modeling_gaincell.py``, so
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` (and lm-eval's ``--model hf`` with
``trust_remote_code=True``) builds the model with :func:`gaincell.load`: the base model, converted, scalers and
targets restored. Importing this module also registers them with ``AutoConfig`` and ``AutoModelForCausalLM``
in this process, so there plain ``from_pretrained(folder)`` does the same without running the folder's code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel

from gaincell.chip.config import GainCellConfig
from gaincell.errors import GainCellError
from gaincell.hf.architecture import ARCHITECTURE, MODEL_CLASS, base_config
from gaincell.hf.convert import convert
from gaincell.hf.finite import refuse_non_finite_logits
from gaincell.hf.pretrained import load

#: ``from_pretrained`` arguments that only say where to find files (the folder is local) or how transformers
#: itself resolved the class; :meth:`GainCellForCausalLM.from_pretrained` accepts and ignores them.
_HUB_ARGUMENTS = {
    "revision", "trust_remote_code", "cache_dir", "force_download", "local_files_only", "proxies", "token",
    "_from_auto", "_commit_hash", "adapter_kwargs", "code_revision", "low_cpu_mem_usage", "use_safetensors",
}  # fmt: skip


class GainCellLMConfig(PreTrainedConfig):
    """The ``config.json`` of a saved gain-cell model: the base model's config, ``base_model_type`` naming it,
    and the gain-cell config under ``gaincell``."""

    model_type = ARCHITECTURE


class GainCellForCausalLM(PreTrainedModel):
    """The name a saved gain-cell model goes by in transformers; building it gives the converted base model.

    ``from_pretrained(folder)`` is :func:`gaincell.load` (the base model, converted, its scalers and targets
    restored), whose forward in eval mode refuses NaN or infinite logits (:func:`refuse_non_finite_logits`:
    lm-eval's own ``--model hf`` would score them); ``from_config(config)`` a freshly initialised converted base
    model. The instances are the base model's class (``LlamaForCausalLM`` with gain-cell attention), as
    :func:`gaincell.convert` makes them, so everything written for the base model (lm-eval, generation,
    accelerate) works unchanged.
    """

    config_class = GainCellLMConfig

    def __init__(self, config, *args, **kwargs) -> None:
        raise GainCellError(
            f"{MODEL_CLASS} is built by from_pretrained(folder) or from_config(config), which give the converted base model"
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """:func:`gaincell.load` of the folder, taking transformers' ``dtype`` and ``device_map``; arguments that
        would change the model (quantisation, GGUF, extra model arguments) are refused by name."""
        if model_args:
            raise GainCellError(f"{MODEL_CLASS}.from_pretrained: positional model arguments are not supported")
        directory = Path(pretrained_model_name_or_path) / (kwargs.pop("subfolder", None) or "")
        if not directory.is_dir():
            raise GainCellError(
                f"{MODEL_CLASS}: {pretrained_model_name_or_path} is not a local folder; gaincell loads saved folders "
                "(download a hub repository first, e.g. with huggingface_hub.snapshot_download)"
            )
        dtype = _dtype(kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None), config)
        device = _device(kwargs.pop("device_map", None))
        unsupported = sorted(key for key, value in kwargs.items() if key not in _HUB_ARGUMENTS and value is not None)
        if unsupported:
            raise GainCellError(
                f"{MODEL_CLASS}.from_pretrained: {', '.join(unsupported)} not supported (gaincell.load rebuilds the model)"
            )
        return refuse_non_finite_logits(load(directory, device=device, dtype=dtype), str(directory))

    @classmethod
    def _from_config(cls, config, **kwargs):
        gain_cell = getattr(config, "gaincell", None)
        if gain_cell is None:
            raise GainCellError(f"config: a {ARCHITECTURE} config needs its gain-cell config (the 'gaincell' key)")
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        model = AutoModelForCausalLM.from_config(base_config(config.to_dict()), **kwargs)
        if isinstance(dtype, torch.dtype):
            model.to(dtype)
        return convert(model, GainCellConfig.from_dict(gain_cell))


def _dtype(value, config) -> torch.dtype | None:
    """transformers' ``dtype`` argument as a torch dtype: ``"auto"`` is the dtype the folder was saved in."""
    if value == "auto":
        value = getattr(config, "dtype", None) or "float32"
    if value is None or isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise GainCellError(f"dtype: {value!r} is not a torch dtype")
    return dtype


def _device(device_map) -> torch.device | str | None:
    """A ``device_map`` that puts the whole model on one device (the op is not split across devices)."""
    if isinstance(device_map, dict) and set(device_map) == {""}:
        device_map = device_map[""]
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        return torch.device("cuda", device_map)
    if device_map is None or isinstance(device_map, torch.device):
        return device_map
    if isinstance(device_map, str) and device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
        return device_map
    raise GainCellError(f"device_map: {device_map!r} not supported; a gaincell model loads on one device (e.g. 'cpu')")


def register() -> None:
    """Register the architecture with transformers' Auto classes (this process only), so ``AutoConfig`` and
    ``AutoModelForCausalLM`` load a saved gain-cell folder without running the folder's code."""
    AutoConfig.register(ARCHITECTURE, GainCellLMConfig, exist_ok=True)
    AutoModelForCausalLM.register(GainCellLMConfig, GainCellForCausalLM, exist_ok=True)


register()
