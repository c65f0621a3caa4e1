"""Which token blocks each optimiser step and process reads: a pure function of (seed, step), so a resumed
run reads exactly what an uninterrupted one would have (SPEC §4's training stages, exact resume)."""

from __future__ import annotations

import numpy as np
import torch

from gaincell.adaptation.data import check_context, epoch_permutation
from gaincell.errors import GainCellError


def block_rows(blocks, indices: torch.Tensor) -> torch.Tensor:
    """Rows of a tensor or a (memory-mapped) numpy array of blocks, as a LongTensor."""
    if isinstance(blocks, torch.Tensor):
        return blocks[indices].long()
    return torch.from_numpy(np.asarray(blocks[indices.numpy()])).long()


def check_blocks(blocks, name: str, model, minimum: int) -> None:
    """One line naming ``name`` unless it is a 2-D integer array of at least ``minimum`` blocks the model can read."""
    if not isinstance(blocks, (torch.Tensor, np.ndarray)) or blocks.ndim != 2:
        raise GainCellError(f"{name} must be a 2-D tensor or array of token blocks (n_blocks, block_size)")
    integer = not blocks.dtype.is_floating_point if isinstance(blocks, torch.Tensor) else blocks.dtype.kind in "iu"
    if not integer or blocks.dtype == torch.bool:
        raise GainCellError(f"{name} must hold integer token ids, got dtype {blocks.dtype}")
    if len(blocks) < minimum:
        # the recipe settings that set each count, so the user knows what to change
        remedy = {"eval_data": "; raise data.eval_fraction or data.eval_blocks, or give data.eval_text",
                  "train_data": "; give more text or lower batch_size"}.get(name, "")  # fmt: skip
        raise GainCellError(
            f"{name} has {len(blocks)} blocks; need at least {minimum} (one per process and batch row){remedy}"
        )
    check_context(model, int(blocks.shape[1]), name)


class BatchOrder:
    """Which blocks each process reads for micro-batch number ``index`` (counted over the whole run).

    Epoch ``e`` reads the blocks in :func:`epoch_permutation` order (seed, e); each micro-batch
    takes the next ``batch_size * world`` of them and process ``rank`` gets its contiguous slice.
    The incomplete batch at an epoch's end is skipped.
    """

    def __init__(self, n_blocks: int, batch_size: int, seed: int, rank: int, world: int) -> None:
        self.n_blocks, self.batch_size, self.seed, self.rank, self.world = n_blocks, batch_size, seed, rank, world
        self.per_epoch = n_blocks // (batch_size * world)
        self._epoch, self._permutation = -1, None

    def indices(self, index: int) -> torch.Tensor:
        epoch, position = divmod(index, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._permutation = epoch, epoch_permutation(self.n_blocks, self.seed, epoch)
        start = (position * self.world + self.rank) * self.batch_size
        return self._permutation[start : start + self.batch_size]

    def epoch(self, index: int) -> float:
        return index / self.per_epoch


def offset_positions(max_offset: int, seed: int, index: int, rank: int, shape: torch.Size) -> torch.Tensor | None:
    """Position ids of micro-batch ``index`` on process ``rank``: the block's own 0 … T−1 shifted by one
    offset in [0, ``max_offset``] drawn from (seed, index, rank), so a resumed run draws the same ones.

    A model adapted on blocks of T tokens only ever saw positions below T; the gain-cell op is not
    rotation invariant (the DAC offsets and clamps act on q and k after RoPE), so an adapted RoPE model
    can break past T (stories260K adapted at 256: perplexity 6.9 at context 256, 339 at 512). Offsets
    up to the evaluation length show it every position it will be scored at (None: no offset).
    """
    if max_offset == 0:
        return None
    offset = int(np.random.default_rng([seed, index, rank, 1]).integers(0, max_offset + 1))
    return (torch.arange(shape[1]) + offset).expand(shape[0], -1)
