"""A broken model gives no number: NaN or infinite logits stop the run, with one line.

One NaN weight makes every logit NaN. Nothing downstream notices: ``argmax`` over NaN is token 0, so
greedy generation appends token 0 again and again, and lm-eval, comparing NaN log-likelihoods, picks
the first choice of every item (acc 0.5 on a two-way task), numbers that look like results. So every
place gaincell turns logits into a number (strided perplexity, the lm-eval adapter's forward, each
generation step) checks them here first. A saved folder loaded by other tools (``AutoModelForCausalLM`` with
``trust_remote_code=True``, lm-eval's ``--model hf``) checks its own forward (:func:`refuse_non_finite_logits`).
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


def _all_finite(logits: torch.Tensor) -> bool:
    """Whether every logit is finite, at the cost of one sum: a NaN or infinite element makes the float32 sum NaN
    or infinite, so a finite sum settles it (17x cheaper than ``isfinite().all()`` on a 512x512 block of logits on
    the CPU); only a non-finite sum, which finite logits may also give by overflowing, is checked element-wise."""
    return bool(torch.isfinite(logits.sum(dtype=torch.float32))) or bool(torch.isfinite(logits).all())


class _FiniteForward:
    """A forward hook: in eval mode, non-finite logits raise :class:`NonFiniteError` naming ``source`` and the
    first non-finite weight. Training has its own checks of the loss (:mod:`gaincell.adaptation.train`)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, module: torch.nn.Module, args, output) -> None:
        logits = getattr(output, "logits", None)
        if module.training or not isinstance(logits, torch.Tensor) or _all_finite(logits):
            return
        kind = "NaN" if bool(torch.isnan(logits).any()) else "infinite"
        broken = next(
            (
                name
                for name, tensor in module.state_dict().items()
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
            ),
            None,
        )
        why = f"its weight {broken} is NaN or infinite" if broken else "its weights are finite: an overflowing dtype?"
        raise NonFiniteError(f"{self.source}: the model gives {kind} logits, so no score or token is computed: {why}")


def refuse_non_finite_logits(model: torch.nn.Module, source: str) -> torch.nn.Module:
    """Make ``model`` raise :class:`NonFiniteError` when a forward in eval mode gives a NaN or infinite logit, so a
    tool that knows nothing of gaincell (lm-eval's ``--model hf``) stops instead of scoring NaN; one float32 sum
    of the logits per forward (:func:`_all_finite`, measured in docs/saved-models.md). ``source`` names the model
    (its folder)."""
    model.register_forward_hook(_FiniteForward(source))
    return model
