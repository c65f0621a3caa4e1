"""Fast forms of the attention op, each tested against :mod:`gaincell.op.equations` (or, for softmax,
against plain masked softmax): ``banded`` (the parallel analog core, CPU and GPU) and ``step`` (its
generation step), both built from ``primitives`` and the ``plan`` a config fixes for them (features,
blocks, decay anchors); ``fused`` (the parallel analog core as Triton kernels for CUDA, source in
``fused_kernels_v2``, the default, and ``fused_kernels``, the first version, kept for timing beside it;
``fused_step``, a generation step's two launches of them);
``dispatch`` (which parallel form runs); ``softmax`` (the sliding-window baseline
of SPEC §3.1, both forms)."""
