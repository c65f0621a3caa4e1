"""What a pre-trained model's attention layers see and produce, for SPEC §4.4 (ours).

Two ways in, both without editing the model's code:

- :func:`capture_attention_io` records, per attention module, the arguments it was called with
  (the layer's input hidden states, RoPE tables, ...) and its output (after the output
  projection), with forward hooks. Calling a *converted* copy of the same module with the same
  arguments gives the gain-cell attention's answer to the same inputs: attention transfer trains
  that answer towards the recorded one.
- :func:`tap_attention` routes the model's attention through an ``AttentionInterface`` function
  that hands q, k, v (RoPE applied, before any grouped-query repeat) and the per-head softmax
  output to a callback, then computes SDPA as usual: data-driven scaler initialisation reads the
  statistics of the pre-trained q, k, v from it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from gaincell.hf.convert import attention_modules

TAP_NAME = "gaincell-tap"


@dataclass
class LayerCall:
    """One attention module's call: positional and keyword arguments, and its output tensor."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    output: torch.Tensor | None = None


@contextmanager
def capture_attention_io(model) -> Iterator[list[LayerCall]]:
    """Record every attention module's inputs and output during the forwards run inside the block.

    Yields one :class:`LayerCall` per layer (in layer order), overwritten by each forward; the
    tensors are detached, so replaying them trains nothing upstream (layers stay independent).
    """
    modules = attention_modules(model)
    calls = [LayerCall() for _ in modules]
    handles = []
    for module, call in zip(modules, calls, strict=True):

        def before(_module, args, kwargs, call=call):
            call.args = tuple(_detach(a) for a in args)
            call.kwargs = {k: _detach(v) for k, v in kwargs.items() if k not in ("past_key_values", "cache")}

        def after(_module, _args, _kwargs, output, call=call):
            call.output = (output[0] if isinstance(output, tuple) else output).detach()

        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _detach(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    return value


def replay(module, call: LayerCall) -> torch.Tensor:
    """Run ``module`` (a converted copy of the recorded one) on a recorded call's inputs."""
    output = module(*call.args, **call.kwargs)
    return output[0] if isinstance(output, tuple) else output


#: module -> callback(module, query, key, value, output) while a tap is active.
_CALLBACKS: dict[int, Callable] = {}


def _tap_forward(module, query, key, value, attention_mask, **kwargs):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    output, weights = ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)
    callback = _CALLBACKS.get(id(module))
    if callback is not None:
        callback(module, query, key, value, output)
    return output, weights


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(TAP_NAME, _tap_forward)
    AttentionMaskInterface.register(TAP_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


@contextmanager
def tap_attention(model, callback: Callable) -> Iterator[None]:
    """Inside the block the (unconverted) model's attention is SDPA that also calls
    ``callback(module, query, key, value, output)``: q, k, v as (B, H, T, D), output (B, T, H, D)."""
    _register()
    previous = model.config._attn_implementation
    modules = attention_modules(model)
    model.set_attn_implementation(TAP_NAME)
    _CALLBACKS.update({id(module): callback for module in modules})
    try:
        yield
    finally:
        for module in modules:
            _CALLBACKS.pop(id(module), None)
        model.set_attn_implementation(previous)
