"""The attention op: SPEC §3 equations (reference), scalers, kernels (banded parallel form, step form), the KV memory."""
