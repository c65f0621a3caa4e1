"""A saved gain-cell model is its own Hugging Face architecture, ``"gaincell"``.

A converted model is a GPT-2, GPT-NeoX or Llama whose attention runs through gaincell. Saved with the base
model's ``config.json`` (``"model_type": "llama"``), every Hugging Face tool would load it as that base model
with softmax attention and report its numbers without a word. So the folder names its own architecture:

- ``"model_type": "gaincell"``, ``"architectures": ["GainCellForCausalLM"]``: not a type transformers knows,
  so no tool loads the folder as something else;
- ``"base_model_type"`` and ``"base_architectures"``: the model it was converted from (every other field of
  ``config.json`` is that model's own config, the gain-cell config is under ``"gaincell"``);
- ``"auto_map"`` naming :data:`REMOTE_CODE_FILE`, a three-line file saved beside the weights that imports
  these classes from the installed gaincell. ``AutoModelForCausalLM.from_pretrained(folder,
  trust_remote_code=True)`` runs it and gets back :func:`gaincell.load`'s model; without
  ``trust_remote_code`` transformers refuses (its own message: the folder "contains custom code"); without
  gaincell installed, it names the missing package ``gaincell``.

In a process that has imported :mod:`gaincell.hf.pretrained` the classes are registered with transformers'
``AutoConfig`` and ``AutoModelForCausalLM``, so plain ``from_pretrained`` loads the folder with no remote code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel

from gaincell.atomic import atomic_file
from gaincell.errors import GainCellError

ARCHITECTURE = "gaincell"
MODEL_CLASS = "GainCellForCausalLM"
CONFIG_CLASS = "GainCellLMConfig"
REMOTE_CODE_FILE = "modeling_gaincell.py"
AUTO_MAP = {
    "AutoConfig": f"{Path(REMOTE_CODE_FILE).stem}.{CONFIG_CLASS}",
    "AutoModelForCausalLM": f"{Path(REMOTE_CODE_FILE).stem}.{MODEL_CLASS}",
}
REMOTE_CODE = f'''"""Written by gaincell: this folder is a gain-cell attention model (Leroux et al. 2025, arXiv 2409.19315).

transformers runs this file when loading the folder with trust_remote_code=True; the model is rebuilt by the
installed gaincell package (pip install gaincell), the same as gaincell.load(folder).
"""

from gaincell.hf.architecture import {CONFIG_CLASS}, {MODEL_CLASS}

__all__ = ["{CONFIG_CLASS}", "{MODEL_CLASS}"]
'''

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

    def base_config(self) -> PreTrainedConfig:
        """The config of the model this one was converted from (a ``LlamaConfig``, ...), gain-cell config kept."""
        return base_config(self.to_dict())


class GainCellForCausalLM(PreTrainedModel):
    """The name a saved gain-cell model goes by in transformers; building it gives the converted base model.

    ``from_pretrained(folder)`` is :func:`gaincell.load` (the base model, converted, its scalers and targets
    restored); ``from_config(config)`` a freshly initialised converted base model. The instances are the base
    model's class (``LlamaForCausalLM`` with gain-cell attention), as :func:`gaincell.convert` makes them, so
    everything written for the base model (lm-eval, generation, accelerate) works unchanged.
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
        from gaincell.hf.pretrained import load

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
        return load(directory, device=device, dtype=dtype)

    @classmethod
    def _from_config(cls, config, **kwargs):
        from gaincell.chip.config import GainCellConfig
        from gaincell.hf.convert import convert

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


def is_architecture(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` (as a dict) names the gain-cell architecture."""
    return config.get("model_type") == ARCHITECTURE


def architecture_config(base: dict[str, Any]) -> dict[str, Any]:
    """The ``config.json`` of a saved gain-cell model from its base model's (which holds ``"gaincell"``)."""
    if is_architecture(base):
        return dict(base)
    if not base.get("gaincell"):
        raise GainCellError("config: only a converted model (a config with a gain-cell config) is saved as gaincell")
    rest = {key: value for key, value in base.items() if key not in ("model_type", "architectures", "auto_map")}
    return {
        "model_type": ARCHITECTURE,
        "architectures": [MODEL_CLASS],
        "auto_map": dict(AUTO_MAP),
        "base_model_type": base.get("model_type"),
        "base_architectures": base.get("architectures"),
        **rest,
    }


def base_config(config: dict[str, Any]) -> PreTrainedConfig:
    """The base model's config from a gain-cell ``config.json`` (as a dict); the gain-cell config stays under
    ``gaincell``. One line naming the field when the base model is missing or not a transformers type."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    base_type = config.get("base_model_type")
    if not isinstance(base_type, str) or base_type not in CONFIG_MAPPING or base_type == ARCHITECTURE:
        raise GainCellError(
            f"config.json: base_model_type must name the transformers model the gain-cell model was converted from "
            f"(e.g. 'llama'), got {base_type!r}"
        )
    dropped = ("model_type", "architectures", "auto_map", "base_model_type", "base_architectures")
    fields = {key: value for key, value in config.items() if key not in dropped}
    fields["architectures"] = config.get("base_architectures")
    return CONFIG_MAPPING[base_type].from_dict(fields)


def write_architecture(directory: str | os.PathLike) -> None:
    """Make the ``save_pretrained`` folder of a converted model name the gain-cell architecture: its
    ``config.json`` rewritten (:func:`architecture_config`) and :data:`REMOTE_CODE_FILE` beside it."""
    directory = Path(directory)
    config_file = directory / "config.json"
    config = architecture_config(json.loads(config_file.read_text(encoding="utf-8")))
    with atomic_file(directory / REMOTE_CODE_FILE, encoding="utf-8") as handle:
        handle.write(REMOTE_CODE)
    with atomic_file(config_file, encoding="utf-8") as handle:
        handle.write(json.dumps(config, indent=2, sort_keys=True) + "\n")


def register() -> None:
    """Register the architecture with transformers' Auto classes (this process only), so ``AutoConfig`` and
    ``AutoModelForCausalLM`` load a saved gain-cell folder without running the folder's code."""
    AutoConfig.register(ARCHITECTURE, GainCellLMConfig, exist_ok=True)
    AutoModelForCausalLM.register(GainCellLMConfig, GainCellForCausalLM, exist_ok=True)
