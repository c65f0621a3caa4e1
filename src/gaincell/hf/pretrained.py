"""Save and load gain-cell models as ``save_pretrained`` directories of their own architecture.

Everything lives in one directory: ``config.json`` names the ``gaincell`` architecture and carries the
base model's config with the gain-cell config under ``"gaincell"`` (:mod:`gaincell.hf.architecture`);
the safetensors weights carry the scalers and calibration targets beside the model's own tensors
(``…attn.gaincell.scalers.a_q``, ``…gaincell.target_mean``). :func:`load` gives the model back converted
(as does transformers with ``trust_remote_code=True``), and :func:`load_tokenizer` reads the tokenizer
saved beside it.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub import ModelCard

from gaincell.atomic import atomic_directory, check_replaceable
from gaincell.chip.config import GainCellConfig
from gaincell.devices import parse_device
from gaincell.errors import GainCellError, first_line
from gaincell.hf.architecture import base_config, is_architecture
from gaincell.hf.card import CARD_FILE, model_card
from gaincell.hf.convert import convert

GAIN_CELL_KEY = ".gaincell."

#: Files of which a saved tokenizer has at least one (``AutoTokenizer`` would otherwise build an
#: empty tokenizer from ``config.json`` alone, and every text would encode to nothing).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
#: The file :func:`save` leaves in every model folder, so that only such a folder is ever replaced.
MODEL_MARKER = ".gaincell-model"


def is_saved_model(directory: Path) -> bool:
    """Whether :func:`save` wrote ``directory`` (its marker, or a config.json with a gain-cell config)."""
    if (directory / MODEL_MARKER).is_file():
        return True
    try:
        return "gaincell" in json.loads((directory / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def save(model, path: str | os.PathLike, tokenizer=None, card: ModelCard | None = None) -> Path:
    """``model.save_pretrained`` (and the tokenizer's) into ``path``, atomically: a crash leaves the
    previous directory (or none), never a half-written one. An existing ``path`` is replaced only if it
    is empty or a model saved here before; anything else is refused before a byte is written. Files a user
    added to a saved folder are kept (:func:`gaincell.atomic.atomic_directory`'s manifest).
    ``README.md`` is ``card``, else a card with the model's hardware config (:mod:`gaincell.hf.card`)."""
    path = check_replaceable("path", path, is_saved_model, "a model saved by gaincell.save")
    if card is None:
        settings = getattr(model.config, "gaincell", None)
        card = model_card(settings, base_model=getattr(model.config, "_name_or_path", None) or None)
    with atomic_directory(path, "gaincell.save") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        card.save(Path(tmp) / CARD_FILE)
        (Path(tmp) / MODEL_MARKER).write_text("written by gaincell.save; gaincell replaces only folders with this file\n")
    return path


@contextmanager
def _quiet_transformers():
    """from_pretrained reports the gain-cell tensors as unexpected; they are loaded right after."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def torch_device(name: str | torch.device | None = None) -> torch.device:
    """``name`` as a torch device that exists on this machine; None: the GPU when there is one, else the CPU."""
    return parse_device(name, "device")


def load(path: str | os.PathLike, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Load a model saved by :func:`save` (or any ``save_pretrained`` causal LM directory).

    A folder of the gain-cell architecture (:mod:`gaincell.hf.architecture`), or one saved before it
    existed (the base model's type with a gain-cell config), comes back converted, with its scalers and
    targets; a folder without a gain-cell config comes back as the plain transformers model, unless its
    weights hold gain-cell tensors: then its config lost the gain-cell part and it is refused.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if device is not None:
        device = torch_device(device)
    directory = Path(path)
    if not directory.is_dir():
        raise GainCellError(f"MODEL_DIR: {directory} is not a directory")
    if not (directory / "config.json").is_file():
        raise GainCellError(f"MODEL_DIR: {directory} has no config.json (not a save_pretrained directory)")
    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise GainCellError("config.json must hold a JSON object")
        config = base_config(raw) if is_architecture(raw) else AutoConfig.from_pretrained(directory)
        gain_cell = getattr(config, "gaincell", None)
        if gain_cell is None:
            _refuse_lost_config(directory, is_architecture(raw))
        gain_cell_config = None if gain_cell is None else GainCellConfig.from_dict(gain_cell)
        with _quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(directory, config=config, dtype=dtype or torch.float32)
    except GainCellError as error:
        raise GainCellError(f"MODEL_DIR: {directory}: {error}") from error
    except Exception as error:  # corrupt or foreign files are a user input problem
        raise GainCellError(f"MODEL_DIR: cannot load a model from {directory}: {first_line(error)}") from error
    if gain_cell_config is not None:
        convert(model, gain_cell_config)
        _load_gain_cell_tensors(model, directory)
    if device is not None:
        model.to(device)
    return model.eval()


def _refuse_lost_config(directory: Path, named_gain_cell: bool) -> None:
    """A folder whose config has no gain-cell config would load as the softmax base model: refused when the
    folder says it is a gain-cell model (its architecture, or gain-cell tensors in its weights)."""
    tensors = [key for key in _tensor_names(directory) if GAIN_CELL_KEY in key]
    if named_gain_cell or tensors:
        held = f"holds gain-cell tensors ({tensors[0]}, ...)" if tensors else "names the gaincell architecture"
        raise GainCellError(
            f"{held} but config.json has no gain-cell config (the 'gaincell' key is missing or null), so it "
            "would load as the softmax model; restore config.json from where the model was saved"
        )


def _tensor_names(directory: Path) -> list[str]:
    """The tensor names in the folder's safetensors files (headers only); none when it has no such file."""
    from safetensors import safe_open

    try:
        files = _weight_files(directory)
    except GainCellError:
        return []
    names: list[str] = []
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            names += list(handle.keys())
    return names


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer saved beside a model by :func:`save` (read with ``AutoTokenizer``)."""
    from transformers import AutoTokenizer

    directory = Path(path)
    if not directory.is_dir():
        raise GainCellError(f"MODEL_DIR: {directory} is not a directory")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise GainCellError(
            f"MODEL_DIR: {directory} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            "save the model with its tokenizer: gaincell.save(model, path, tokenizer)"
        )
    try:
        return AutoTokenizer.from_pretrained(directory, **_tokenizer_config(directory))
    except Exception as error:  # corrupt tokenizer files are a user input problem
        raise GainCellError(f"MODEL_DIR: cannot load a tokenizer from {directory}: {first_line(error)}") from error


def _tokenizer_config(directory: Path) -> dict:
    """``AutoTokenizer`` reads ``config.json`` through ``AutoConfig`` first, which for the gain-cell
    architecture asks whether to run the folder's code; it is given the base model's config instead."""
    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {"config": base_config(raw)} if isinstance(raw, dict) and is_architecture(raw) else {}


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted({directory / name for name in weight_map.values()})
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    raise GainCellError(f"MODEL_DIR: {directory} has no safetensors weights (model.safetensors)")


def _load_gain_cell_tensors(model, directory: Path) -> None:
    from safetensors import safe_open

    tensors = {}
    try:
        for file in _weight_files(directory):
            with safe_open(str(file), framework="pt") as handle:
                tensors.update({key: handle.get_tensor(key) for key in handle.keys() if GAIN_CELL_KEY in key})
    except GainCellError:
        raise
    except Exception as error:
        raise GainCellError(f"MODEL_DIR: cannot read the weights in {directory}: {first_line(error)}") from error
    expected = {key: value for key, value in model.state_dict().items() if GAIN_CELL_KEY in key}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise GainCellError(
            f"MODEL_DIR: the gain-cell tensors in {directory} do not match the model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, value in expected.items():
        if tensors[key].shape != value.shape:
            raise GainCellError(
                f"MODEL_DIR: {key} in {directory} must have shape {tuple(value.shape)} (the model's heads), "
                f"got {tuple(tensors[key].shape)}"
            )
    model.load_state_dict(tensors, strict=False)


# -- pre-trained models from anywhere the ecosystem keeps them ------------------------------------


def _pretrained_source(name_or_path: str | os.PathLike, gguf_file: str | None) -> tuple[str, str | None, bool]:
    """(what to give ``from_pretrained``, its ``gguf_file``, whether it is a local directory).

    A hub id is ``name`` or ``owner/name``; a path to a ``.gguf`` file is split into its folder and
    file name, as transformers expects (``from_pretrained(folder, gguf_file=name)``).
    """
    name = str(name_or_path)
    path = Path(name).expanduser()
    if gguf_file is not None and (not isinstance(gguf_file, str) or not gguf_file):
        raise GainCellError(f"gguf_file must be a file name, got {gguf_file!r}")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise GainCellError(f"model: {name} is not a directory or a .gguf file (a save_pretrained folder or a hub id)")
        if gguf_file is not None:
            raise GainCellError(f"gguf_file: model {name} is already a .gguf file; give one or the other")
        return str(path.parent), path.name, True
    if path.is_dir():
        if gguf_file is not None and not (path / gguf_file).is_file():
            raise GainCellError(f"gguf_file: no file {gguf_file} in {path}")
        if gguf_file is None and not (path / "config.json").is_file():
            found = sorted(p.name for p in path.glob("*.gguf"))
            hint = f"; pass gguf_file= one of {found}" if found else ""
            raise GainCellError(f"model: {path} has no config.json (not a save_pretrained directory){hint}")
        return str(path), gguf_file, True
    if is_local_path(name):
        raise GainCellError(f"model: no such directory or .gguf file {name}")
    return name, gguf_file, False


def is_local_path(name: str | os.PathLike) -> bool:
    """Whether ``name`` can only mean a local path (hub ids are ``name`` or ``owner/name``)."""
    name = str(name)
    return Path(name).expanduser().exists() or Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1


def is_saved_directory(name: str | os.PathLike, gguf_file: str | None = None) -> bool:
    """Whether ``name`` is meant as a local ``save_pretrained`` folder (not a GGUF file, not a hub id)."""
    return gguf_file is None and not str(name).lower().endswith(".gguf") and is_local_path(name)


def _library_error(what: str, name: str, error: Exception) -> GainCellError:
    if isinstance(error, ImportError) and "gguf" in str(error).lower():
        return GainCellError(f"model: reading {name} needs the gguf package: pip install 'gaincell[gguf]'")
    if not is_local_path(name) and not Path(name).exists():  # a hub id that did not come: offline, or a typo
        # ``runs/model`` reads as a hub id too: the user more likely meant a folder, so say first that it is not there
        return GainCellError(
            f"model: no such directory {name!r} ({Path(name).absolute()} does not exist), and as a hub id it gives no "
            f"{what.removeprefix('a ')}: {first_line(error).rstrip('.')}; offline, `gaincell fetch` gives a real model "
            "(SmolLM2-135M, a .gguf file) and `gaincell demo` a small one (gaincell-demo/pretrained)"
        )
    return GainCellError(
        f"model: cannot load {what} for {name!r} (a local directory, a .gguf file or a hub id): "
        f"{first_line(error).rstrip('.')}"
    )


def load_pretrained(name_or_path: str | os.PathLike, gguf_file: str | None = None, *, dtype: torch.dtype | None = None):
    """Any causal LM the ecosystem can load: a hub id, a ``save_pretrained`` folder or a GGUF file.

    The one place adapt, eval and generate load models. A folder saved by :func:`save` comes back
    converted (:func:`load`); a GGUF file (``gguf_file=`` inside a folder or hub repo, or a path
    ending in ``.gguf``) is dequantised by transformers to float32 (needs ``gaincell[gguf]``).
    """
    source, gguf_file, local = _pretrained_source(name_or_path, gguf_file)
    if local and gguf_file is None:
        return load(source, dtype=dtype)
    from transformers import AutoModelForCausalLM

    extra = {}
    if gguf_file is not None:
        from transformers import GgufConfig

        extra["quantization_config"] = GgufConfig(gguf_file=gguf_file, dequantize=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=dtype or torch.float32, **extra)
    except Exception as error:
        raise _library_error("a model", str(name_or_path), error) from error
    if gguf_file is not None:
        _forget_gguf_origin(model)
    return model.eval()


def _forget_gguf_origin(model) -> None:
    """A GGUF model dequantised to float tensors is an ordinary model: trainable, saveable with
    ``save_pretrained``. transformers keeps it marked as quantised (and refuses to save it); unmark it."""
    packed = sorted({type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()})
    if packed:
        raise GainCellError(f"model: the GGUF weights stayed packed ({', '.join(packed)}); gaincell needs them dequantised")
    model.hf_quantizer = None
    model.is_quantized = False
    for owner in (model, model.config):
        if hasattr(owner, "quantization_method"):
            owner.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_pretrained_tokenizer(name_or_path: str | os.PathLike, gguf_file: str | None = None):
    """The tokenizer of :func:`load_pretrained`'s model (a GGUF file carries its own)."""
    source, gguf_file, local = _pretrained_source(name_or_path, gguf_file)
    if local and gguf_file is None:
        return load_tokenizer(source)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    except Exception as error:
        raise _library_error("a tokenizer", str(name_or_path), error) from error
