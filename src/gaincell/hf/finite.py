"""A broken model gives no number: NaN or infinite logits stop the run, with one line.

One NaN weight makes every logit NaN. Nothing downstream notices: ``argmax`` over NaN is token 0, so
greedy generation appends token 0 again and again, and lm-eval, comparing NaN log-likelihoods, picks
the first choice of every item (acc 0.5 on a two-way task), numbers that look like results. So every
place gaincell turns logits into a number (strided perplexity, the lm-eval adapter's forward, each
generation step) checks them here first.
"""

from __future__ import annotations

import torch

from gaincell.errors import NonFiniteError


def check_finite_logits(logits: torch.Tensor, what: str) -> None:
    """Raise :class:`NonFiniteError` naming ``what`` (the number that would have been reported) unless every
    logit is finite."""
    if bool(torch.isfinite(logits).all()):
        return
    kind = "NaN" if bool(torch.isnan(logits).any()) else "infinite"
    raise NonFiniteError(
        f"the model gives {kind} logits, so no {what} is reported: its weights or settings are broken "
        "(a NaN or infinite weight, or an overflowing dtype)"
    )


class FiniteLogits:
    """A ``generate`` logits processor that stops generation at the first step whose scores hold a NaN or +inf,
    or a row with no finite score. Sampling's own filters (top-k) set some scores to -inf; that is allowed.
    (A plain callable, as ``LogitsProcessorList`` takes: importing transformers here would slow every command
    that imports the evaluation code, ``gaincell sweep --help`` among them.)"""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if bool(torch.isnan(scores).any() | torch.isposinf(scores).any()):
            check_finite_logits(scores, "generated token")
        if not bool(torch.isfinite(scores).any(dim=-1).all()):
            raise NonFiniteError("the model gives no finite logit for the next token, so no token is generated")
        return scores
