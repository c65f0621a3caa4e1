"""The lm-eval model for gain-cell models, and the one place that knows how a model to evaluate is loaded.

- :class:`GainCellLM`: an lm-eval-harness model (registered as ``"gaincell"``) that wraps an
  already-built model and tokenizer, or loads a model directory, so ``lm_eval`` runs any gain-cell
  model on its tasks. It is built on first use: lm-eval is an optional dependency.
- :func:`load_model_dir` (:func:`gaincell.load`: a gain-cell model comes back converted, with its
  scalers, targets and config; a hub id or GGUF file through ``load_pretrained``): the adapter looks it
  up at call time, so replacing it changes the adapter and ``gaincell eval`` together.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch

from gaincell.errors import GainCellError
from gaincell.hf.finite import FiniteLogits, check_finite_logits
from gaincell.hf.pretrained import is_saved_directory, load, load_pretrained, load_pretrained_tokenizer, load_tokenizer


def load_model_dir(path: str | os.PathLike, gguf_file: str | None = None):
    """Load the causal LM saved in directory ``path`` with :func:`gaincell.load` (converted if it was
    saved so), or a hub id or GGUF file with :func:`gaincell.hf.pretrained.load_pretrained`."""

    if not is_saved_directory(path, gguf_file):
        return load_pretrained(path, gguf_file)
    return load(_model_directory(path))


def load_tokenizer_dir(path: str | os.PathLike, gguf_file: str | None = None):
    """Load the tokenizer saved beside a model in directory ``path`` (or a hub id's or GGUF file's)."""

    if not is_saved_directory(path, gguf_file):
        return load_pretrained_tokenizer(path, gguf_file)
    return load_tokenizer(_model_directory(path))


def _model_directory(path: str | os.PathLike) -> Path:
    directory = Path(path)
    if not directory.is_dir():
        raise GainCellError(f"MODEL_DIR: no such directory: {directory}")
    return directory


@cache
def lm_eval_model_class() -> type:
    """Define and register (as ``"gaincell"``) the lm-eval model class; needs ``lm-eval``."""
    try:
        from lm_eval.api.registry import register_model
        from lm_eval.models.huggingface import HFLM
        from transformers import LogitsProcessorList
    except ImportError as error:
        raise GainCellError("lm-eval tasks need the lm-eval package: pip install 'gaincell[eval]'") from error

    @register_model("gaincell")
    class GainCellLM(HFLM):
        """lm-eval's Hugging Face causal-LM model around a gain-cell (or any causal) model.

        ``pretrained`` is a model instance (then ``tokenizer`` must be given) or a model
        directory (read with :func:`load_model_dir` and :func:`load_tokenizer_dir`); the other
        keyword arguments are ``HFLM``'s (``batch_size``, ``max_length``, ...). ``device`` moves
        the model; by default a loaded directory goes to the GPU when there is one.

        Batched log-likelihood requests are padded on the right with no attention mask (lm-eval's
        causal path): the op is causal, so no scored token sees the padding and the scores equal
        batch size 1. Left padding with a mask (batched generation) is refused by the op's mask check.
        """

        def __init__(self, pretrained, tokenizer=None, device: str | None = None, **kwargs) -> None:
            if isinstance(pretrained, (str, os.PathLike)):
                directory = pretrained
                pretrained = load_model_dir(directory)
                tokenizer = load_tokenizer_dir(tokenizer or directory)
                device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            elif tokenizer is None:
                raise GainCellError("tokenizer: required when pretrained is a model instance")
            elif isinstance(tokenizer, (str, os.PathLike)):
                tokenizer = load_tokenizer_dir(tokenizer)
            if device:
                pretrained = pretrained.to(device)
            super().__init__(pretrained=pretrained, tokenizer=tokenizer, backend="causal", **kwargs)

        def _model_call(self, inps, attn_mask=None, labels=None):
            """lm-eval's forward, whose logits become every log-likelihood: a NaN model stops here."""
            logits = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
            check_finite_logits(logits, "log-likelihood")
            return logits

        def _loglikelihood_tokens(self, requests, *args, **kwargs):
            """lm-eval's scoring, after a check it makes with a bare ``assert``: every answer must fit ``max_length``."""
            longest = max((len(continuation) for _, _, continuation in requests), default=0)
            if longest > self.max_length:
                raise GainCellError(
                    f"--max-length must hold the longest answer to score, {longest} tokens, got {self.max_length}; "
                    f"use --max-length {longest + 1} or more (or leave it out: the model's positions)"
                )
            return super()._loglikelihood_tokens(requests, *args, **kwargs)

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            """lm-eval's generation, stopped at the first step with NaN logits (greedy would emit token 0)."""
            processors = LogitsProcessorList([*(generation_kwargs.pop("logits_processor", None) or []), FiniteLogits()])
            return super()._model_generate(context, max_length, stop, logits_processor=processors, **generation_kwargs)

    GainCellLM.__qualname__ = "GainCellLM"
    return GainCellLM


def __getattr__(name: str):
    """``gaincell.evaluation.lm_eval_model.GainCellLM`` builds the lm-eval class on first access (lm-eval is optional)."""
    if name == "GainCellLM":
        return lm_eval_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
