"""A saved gain-cell model is its own Hugging Face architecture, ``"gaincell"``.

A converted model is a GPT-2, GPT-NeoX or Llama whose attention runs through gaincell. Saved with the base
model's ``config.json`` (``"model_type": "llama"``), every Hugging Face tool would load it as that base model
with softmax attention and report its numbers without a word. So the folder names its own architecture:

- ``"model_type": "gaincell"``, ``"architectures": ["GainCellForCausalLM"]``: not a type transformers knows,
  so no tool loads the folder as something else;
- ``"base_model_type"`` and ``"base_architectures"``: the model it was converted from (every other field of
  ``config.json`` is that model's own config, the gain-cell config is under ``"gaincell"``);
- ``"auto_map"`` naming :data:`REMOTE_CODE_FILE`, a three-line file saved beside the weights that imports
  the classes of :mod:`gaincell.hf.auto` from the installed gaincell. ``AutoModelForCausalLM.from_pretrained(folder,
  trust_remote_code=True)`` runs it and gets back :func:`gaincell.load`'s model; without
  ``trust_remote_code`` transformers refuses (its own message: the folder "contains custom code"); without
  gaincell installed, it names the missing package ``gaincell``.

The classes themselves are in :mod:`gaincell.hf.auto`; this module is the folder's format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gaincell.atomic import atomic_file
from gaincell.errors import GainCellError

if TYPE_CHECKING:  # transformers is imported only when a config is built (`gaincell sweep --help` starts without it)
    from transformers import PreTrainedConfig

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

from gaincell.hf.auto import {CONFIG_CLASS}, {MODEL_CLASS}

__all__ = ["{CONFIG_CLASS}", "{MODEL_CLASS}"]
'''


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
