"""Fast forms of the attention op, each tested against :mod:`gaincell.op.equations` (or, for softmax,
against plain masked softmax): ``banded`` (the analog core on CPU and GPU), ``softmax`` (the
sliding-window baseline of SPEC §3.1)."""
