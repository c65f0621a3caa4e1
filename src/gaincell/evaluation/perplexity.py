"""Evaluation as the paper reports it (SPEC §5): perplexity and lm-eval-harness tasks.

- :func:`strided_perplexity`: the standard sliding-window perplexity of a causal LM over a token
  stream — windows of ``context`` tokens advanced by ``stride``, each token scored exactly once,
  with at least ``context - stride`` tokens of left context once the first window is full.
- :class:`GainCellLM`: an lm-eval-harness model (registered as ``"gaincell"``) that wraps an
  already-built model and tokenizer, or loads a model directory, so ``lm_eval`` runs any gain-cell
  model on its tasks. It is built on first use: lm-eval is an optional dependency.

lm-eval tasks run through :mod:`gaincell.evaluation.harness` (one at a time, timed) from the local
task definitions of :mod:`gaincell.evaluation.tasks`.

Model directories are read by :func:`load_model_dir` (:func:`gaincell.load`: a gain-cell model comes
back converted, with its scalers, targets and config), the one place that knows how a saved model
is loaded; every caller here looks it up at call time, so replacing it changes the adapter and the
CLI together.
"""

from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path

import torch

from gaincell.adaptation.data import check_context, load_text_corpus, model_max_positions
from gaincell.errors import GainCellError
from gaincell.hf.pretrained import is_saved_directory, load, load_pretrained, load_pretrained_tokenizer, load_tokenizer
from gaincell.validation import check_int


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


def _windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window; no position is scored twice.

    A window's first token has no left context in it, so with ``stride == context`` the first token
    of every window is skipped; with ``stride < context`` every token after the first is scored.
    """
    windows, scored_up_to = [], 1
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        windows.append((begin, end, max(scored_up_to, begin + 1)))
        scored_up_to = end
        if end == n_tokens:
            break
    return windows


@torch.no_grad()
def strided_perplexity(
    model,
    token_ids: torch.Tensor,
    context: int,
    stride: int,
    batch_size: int = 1,
) -> dict:
    """Perplexity of ``model`` on a 1-D token stream by the sliding-window method.

    Window ``k`` covers tokens ``[k*stride, k*stride + context)``; only the tokens not scored by an
    earlier window count, so each token after the first is predicted once (``stride < context``),
    from at least ``context - stride`` earlier tokens (all of them near the start). ``batch_size`` windows run
    together (the last one is padded on the right, which a causal model cannot see).
    Returns ``{"ppl", "nll", "tokens"}``: ``nll`` is the mean negative log-likelihood in nats.
    """
    for name, value in (("context", context), ("stride", stride), ("batch_size", batch_size)):
        check_int(name, value, 1)
    if context < 2:
        raise GainCellError(f"context must be at least 2 tokens, got {context}")
    if stride > context:
        raise GainCellError(f"stride must be <= context={context}, got {stride}")
    check_context(model, context, "context")
    token_ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
    if token_ids.numel() < 2:
        raise GainCellError(f"text: needs at least 2 tokens to score, got {token_ids.numel()}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    windows = _windows(token_ids.numel(), context, stride)
    for first in range(0, len(windows), batch_size):
        group = windows[first : first + batch_size]
        width = max(end - begin for begin, end, _ in group)
        input_ids = torch.zeros(len(group), width, dtype=torch.long)
        scored = torch.zeros(len(group), width - 1, dtype=torch.bool)
        for row, (begin, end, scored_from) in enumerate(group):
            input_ids[row, : end - begin] = token_ids[begin:end]
            scored[row, scored_from - begin - 1 : end - begin - 1] = True
        input_ids, scored = input_ids.to(device), scored.to(device)
        logits = model(input_ids=input_ids).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
        total_nll += float(nll[scored].double().sum())
        total_tokens += int(scored.sum())
    model.train(was_training)
    mean_nll = total_nll / total_tokens
    return {"ppl": math.exp(mean_nll), "nll": mean_nll, "tokens": total_tokens}


def text_perplexity(
    model,
    tokenizer,
    text: str | os.PathLike | None = None,
    *,
    dataset: str | None = None,
    split: str = "test",
    config: str | None = None,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 1,
    max_tokens: int | None = None,
) -> dict:
    """:func:`strided_perplexity` over a text file or folder (``text``) or a hub ``dataset``.

    Rows are joined with blank lines (one row per file; hub WikiText rows are lines, joined as in
    the usual WikiText perplexity recipe) and tokenised as one stream. ``context`` defaults to the
    model's positions, ``stride`` to half the context; ``max_tokens`` scores only a prefix.
    """
    corpus = load_text_corpus(text=text, dataset=dataset, split=split, config=config)
    if context is None:
        context = model_max_positions(model) or 1024
    if stride is None:
        stride = max(1, context // 2)
    joined = "\n\n".join(corpus["text"])
    token_ids = torch.tensor(tokenizer(joined, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or max_tokens < 2:
            raise GainCellError(f"max_tokens must be an integer >= 2, got {max_tokens!r}")
        token_ids = token_ids[:max_tokens]
    result = strided_perplexity(model, token_ids, context, stride, batch_size)
    return {**result, "context": context, "stride": stride}


# -- lm-evaluation-harness ------------------------------------------------------------------------


@cache
def lm_eval_model_class() -> type:
    """Define and register (as ``"gaincell"``) the lm-eval model class; needs ``lm-eval``."""
    try:
        from lm_eval.api.registry import register_model
        from lm_eval.models.huggingface import HFLM
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

    GainCellLM.__qualname__ = "GainCellLM"
    return GainCellLM


def __getattr__(name: str):
    """``gaincell.evaluation.perplexity.GainCellLM`` builds the lm-eval class on first access (lm-eval is optional)."""
    if name == "GainCellLM":
        return lm_eval_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
