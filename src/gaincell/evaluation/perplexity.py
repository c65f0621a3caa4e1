"""Perplexity as the paper reports it (SPEC §5).

:func:`strided_perplexity` is the standard sliding-window perplexity of a causal LM over a token
stream — windows of ``context`` tokens advanced by ``stride``, each token scored exactly once, with at
least ``context - stride`` tokens of left context once the first window is full;
:func:`text_perplexity` runs it on a text file. lm-eval's tasks are :mod:`gaincell.evaluation.harness`.
"""

from __future__ import annotations

import math
import os

import torch

from gaincell.adaptation.data import check_context, load_text_corpus, model_max_positions
from gaincell.errors import GainCellError
from gaincell.hf.finite import check_finite_logits
from gaincell.validation import check_int


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
        check_finite_logits(logits, "perplexity")
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
